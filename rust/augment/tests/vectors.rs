//! Vector files: the text formats, every malformed file as one located error, and the saved
//! index (round trip, reuse, rebuild when the text changes).

use std::path::PathBuf;

use tinyfast_augment::vectors::{self, file, text, Loaded};
use tinyfast_augment::Error;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tinyfast-augment-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data_error(text: &str) -> (Option<u64>, String) {
    let dir = TempDir::new("bad");
    let path = dir.write("v.txt", text);
    match text::read_text(&path) {
        Err(Error::Data {
            path: p,
            line,
            message,
        }) => {
            assert_eq!(p, path);
            (line, message)
        }
        Err(other) => panic!("expected a data error, got {other}"),
        Ok(_) => panic!("accepted {text:?}"),
    }
}

#[test]
fn glove_and_word2vec_text() {
    let dir = TempDir::new("formats");
    let glove = dir.write(
        "g.txt",
        "good 1 0 0\nbad 0 1 0\n, 0 0 1\n\nfine 0.9 0.1 0\n",
    );
    let v = text::read_text(&glove).unwrap();
    assert_eq!(v.dim, 3);
    assert_eq!(v.words, ["good", "bad", "fine"]); // "," is checked, then dropped
    assert_eq!(v.values.len(), 9);
    let w2v = dir.write("w.txt", "2 2\ngood 1 0 \nbad 0 1 \n");
    let v = text::read_text(&w2v).unwrap();
    assert_eq!((v.dim, v.words.len()), (2, 2));
}

#[test]
fn malformed_files_name_the_line() {
    let (line, m) = data_error("good 1 0 0\nbad 0 1\n");
    assert_eq!(line, Some(2));
    assert!(m.contains("2 values") && m.contains("have 3"), "{m}");
    let (line, m) = data_error("good 1 0\nbad 0 x\n");
    assert_eq!(line, Some(2));
    assert!(m.contains("\"x\"") && m.contains("not a number"), "{m}");
    let (line, m) = data_error("good 1 nan\n");
    assert_eq!(line, Some(1));
    assert!(m.contains("not finite"), "{m}");
    let (line, m) = data_error("good 1 0\nbad 0 1\ngood 1 1\n");
    assert_eq!(line, Some(3));
    assert!(m.contains("twice") && m.contains("line 1"), "{m}");
    let (line, m) = data_error("");
    assert_eq!(line, None);
    assert!(m.contains("no word vectors"), "{m}");
    let (line, _) = data_error("\n\n");
    assert_eq!(line, None);
    let (line, m) = data_error("3 2\ngood 1 0\nbad 0 1\n");
    assert_eq!(line, Some(1));
    assert!(m.contains("announces 3"), "{m}");
    let (line, m) = data_error("good\n");
    assert_eq!(line, Some(1));
    assert!(m.contains("found 1 fields"), "{m}");
    let dir = TempDir::new("utf8");
    let path = dir.0.join("v.txt");
    std::fs::write(&path, b"good 1\nb\xffd 2\n").unwrap();
    let err = text::read_text(&path).err().unwrap().to_string();
    assert!(err.ends_with("v.txt:2: not UTF-8 text (byte 2)"), "{err}");
}

#[test]
fn special_files_are_refused() {
    let dir = TempDir::new("special");
    let err = text::read_text(&dir.0).err().unwrap();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let missing = dir.0.join("missing.txt");
    assert!(matches!(text::read_text(&missing), Err(Error::Io { .. })));
}

#[test]
fn saved_index_round_trips_and_follows_its_text() {
    let dir = TempDir::new("index");
    let src = dir.write("g.txt", "good 3 4 0\nbad 0 1 0\nfine 1 0 0\n");
    let cache = dir.0.join("g.idx");
    let (built, how) = vectors::load(&src, Some(&cache)).unwrap();
    assert_eq!(how, Loaded::BuiltAndSaved);
    let (mapped, how) = vectors::load(&src, Some(&cache)).unwrap();
    assert_eq!(how, Loaded::Cached);
    assert_eq!(built.vectors(), mapped.vectors());
    assert_eq!(mapped.padded_dim(), 8);
    assert_eq!(mapped.row("GOOD"), Some(0));
    assert_eq!(&mapped.vector(0)[..3], &[0.6, 0.8, 0.0]);
    assert_eq!(vectors::load(&cache, None).unwrap().1, Loaded::Index);

    // A changed text (another size) is parsed again and its index replaced.
    std::fs::write(&src, "good 3 4 0\nbad 0 1 0\nfine 1 0 0\nnice 1 1 0\n").unwrap();
    let (rebuilt, how) = vectors::load(&src, Some(&cache)).unwrap();
    assert_eq!((how, rebuilt.len()), (Loaded::BuiltAndSaved, 4));

    // A truncated index is refused with its name, never mapped past its end.
    let bytes = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &bytes[..bytes.len() - 3]).unwrap();
    let err = file::open(&cache).err().unwrap().to_string();
    assert!(
        err.contains("g.idx") && err.contains("not a valid index"),
        "{err}"
    );
}
