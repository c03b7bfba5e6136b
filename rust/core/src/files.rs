//! Reading the files a bundle is made of: regular files only, never past a limit.
//!
//! A character device reports a size of 0 and never ends (`/dev/zero`), and opening a FIFO blocks
//! until a writer comes: [`open_regular`] checks the type before opening, opens without blocking
//! and checks the type again on the opened handle; [`read_limited`] reads at most one byte past its
//! limit, whatever size the file reports.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// What a file that is not a regular one is, for messages ("a FIFO", "a directory", ...).
fn file_kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn not_regular(path: &Path, t: std::fs::FileType) -> Error {
    Error::bundle(path, format!("not a regular file ({})", file_kind(t)))
}

/// Opens `path` for reading if it is a regular file, after following symbolic links.
///
/// The type is checked before opening (opening a FIFO would wait for a writer), the file is opened
/// non-blocking (a FIFO swapped in after the check does not block either; the flag changes nothing
/// for a regular file), and the type is checked again on the handle, which is what is read.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, meta.file_type()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, meta.file_type()));
    }
    Ok(file)
}

/// Reads the regular file `path` whole, if it holds at most `limit` bytes; `what` names the file
/// in the error ("a tokenizer.json"). At most `limit + 1` bytes are ever read, so a file that
/// grows while it is read, or reports a wrong size, cannot make this allocate more.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let too_big = |size: String| {
        Error::bundle(
            path,
            format!("file is {size} bytes; {what} may have at most {limit}"),
        )
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(too_big(len.to_string()));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        // The file grew after its size was checked.
        return Err(too_big(format!("more than {limit}")));
    }
    Ok(bytes)
}

/// [`read_limited`], as UTF-8 text.
pub fn read_utf8(path: &Path, limit: u64, what: &str) -> Result<String> {
    let bytes = read_limited(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::bundle(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}
