//! `tinyfast-rt predict`: lines of text in, one JSON object per line out, in input order.
//!
//! Input is read and run in chunks of up to `8 * batch-size` lines (at most 8192; a chunk also ends
//! where the input read so far ends, so a writer that sends one line and waits gets its answer), so
//! any input size runs in bounded memory; each chunk's results are written and flushed before the
//! next is read. Chunking never changes a result (rows are independent).
//! A bad line (invalid UTF-8, no tab in `--pairs` mode, or longer than [`MAX_LINE_BYTES`]) stops
//! the run with an error naming its line number: the results of the chunks before it have been
//! written already.
//!
//! The input may be a pipe or a FIFO (a stream that never ends is fine: it is answered chunk by
//! chunk); the line limit keeps one that never sends a newline (`/dev/zero`) from growing memory
//! without bound.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use tinyfast_core::config::Task;
use tinyfast_core::{Input, Predictions, Runtime};

use crate::args::{self, Flag};
use crate::shared::{self, CliError};

pub const HELP: &str = "usage: tinyfast-rt predict BUNDLE [options]

Reads one text per line (from standard input, or --input FILE) and writes one JSON object per
line to standard output, in input order:
  classification: {\"label\": \"<name>\", \"label_id\": i, \"probabilities\": [...], \"exit_layer\": k}
  regression:     {\"score\": x, \"exit_layer\": k}
exit_layer is the 1-based layer whose branch answered, or the number of layers for the model's
own head. Lines end with \\n (a \\r before it is dropped); an empty line is an empty text.

options:
  --speed S         early-exit threshold in [0, 1]: a row leaves after a branch whose normalized
                    entropy is below S (default 0: never exit early)
  --batch-size N    rows run together (default 32); never changes a result
  --threads T       worker threads (default 0: one per core)
  --kernel K        int8 kernel: avx512-vnni, avx2 or portable (default: TINYFAST_KERNEL, else
                    the fastest this CPU runs)
  --input FILE      read lines from FILE ('-': standard input, the default); a named pipe works
                    too, and is answered line by line as it streams
  --pairs           each line is text_a<TAB>text_b (exactly one tab)
  -h, --help        print this message

A line may hold at most 1 MiB (1048576 bytes, without its line end): the model reads at most the
bundle's max_length tokens of a text anyway, and the limit bounds the memory an input without line
ends takes. A longer line, invalid UTF-8, or a line without exactly one tab in --pairs mode is an
error naming the line.";

const FLAGS: &[Flag] = &[
    Flag::value("speed"),
    Flag::value("batch-size"),
    Flag::value("threads"),
    Flag::value("kernel"),
    Flag::value("input"),
    Flag::switch("pairs"),
];

/// Lines read per chunk for each row of `--batch-size`.
const LINES_PER_BATCH: usize = 8;
/// Most lines read per chunk.
const MAX_CHUNK_LINES: usize = 8192;
/// Most bytes a line may hold, without its `\n` or `\r\n` (see HELP).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Bytes read from the input at once. A chunk also ends where the bytes read so far end, so that
/// lines written one at a time to a pipe are answered one at a time.
const READ_BUFFER: usize = 1 << 20;

pub fn run(argv: &[String]) -> Result<(), CliError> {
    let p = args::parse(argv, FLAGS).map_err(CliError::Usage)?;
    if p.help {
        return shared::print(HELP);
    }
    let bundle = p.positionals(&["BUNDLE"]).map_err(CliError::Usage)?[0];
    let speed = shared::check_speed(
        p.get("speed", "a number in [0, 1]")
            .map_err(CliError::Usage)?
            .unwrap_or(0.0),
    )?;
    let batch_size = shared::at_least(
        "batch-size",
        p.get("batch-size", "a positive integer")
            .map_err(CliError::Usage)?
            .unwrap_or(32),
        1,
    )?;
    let threads = p
        .get("threads", "a number of threads (0: one per core)")
        .map_err(CliError::Usage)?
        .unwrap_or(0);
    let kernel = shared::kernel(p.value("kernel"))?;
    let pairs = p.switch("pairs");

    let (source, input): (String, Box<dyn Read>) = match p.value("input") {
        None | Some("-") => ("<stdin>".into(), Box::new(io::stdin())),
        Some(path) => (path.to_string(), Box::new(open_input(path)?)),
    };
    let rt = shared::load_runtime(bundle, threads, kernel)?;
    let mut lines = Lines {
        reader: BufReader::with_capacity(READ_BUFFER, input),
        source,
        line_no: 0,
    };
    let chunk_lines = batch_size
        .saturating_mul(LINES_PER_BATCH)
        .min(MAX_CHUNK_LINES);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut texts: Vec<String> = Vec::with_capacity(chunk_lines);
    let mut eof = false;
    while !eof {
        texts.clear();
        let first_line = lines.line_no + 1;
        while texts.len() < chunk_lines {
            match lines.next()? {
                Some(line) => texts.push(line),
                None => {
                    eof = true;
                    break;
                }
            }
            // Run what has arrived rather than wait for more input (a writer that sends a line and
            // waits for its answer gets it).
            if lines.reader.buffer().is_empty() {
                break;
            }
        }
        if texts.is_empty() {
            continue;
        }
        let inputs = to_inputs(&texts, pairs, first_line, &lines.source)?;
        let preds = rt.predict(&inputs, speed, batch_size).map_err(|e| {
            CliError::Failure(format!(
                "{} lines {first_line}..={}: {e}",
                lines.source,
                first_line + texts.len() - 1
            ))
        })?;
        write_predictions(&mut out, &rt, &preds).map_err(shared::stdout_error)?;
        out.flush().map_err(shared::stdout_error)?;
    }
    out.flush().map_err(shared::stdout_error)
}

/// Lines of the input as UTF-8 strings, without their `\n` or `\r\n`.
struct Lines {
    reader: BufReader<Box<dyn Read>>,
    /// The file name, or `<stdin>`, for messages.
    source: String,
    /// 1-based number of the last line read.
    line_no: usize,
}

impl Lines {
    fn next(&mut self) -> Result<Option<String>, CliError> {
        let mut buf = Vec::new();
        // Room for the longest line allowed and its "\r\n": anything longer is an error below.
        let most = MAX_LINE_BYTES as u64 + 2;
        let n = (&mut self.reader)
            .take(most)
            .read_until(b'\n', &mut buf)
            .map_err(|e| {
                CliError::Failure(format!(
                    "{}: cannot read line {}: {e}",
                    self.source,
                    self.line_no + 1
                ))
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(CliError::Failure(format!(
                "{} line {}: longer than {MAX_LINE_BYTES} bytes, the most a line may hold",
                self.source, self.line_no
            )));
        }
        String::from_utf8(buf).map(Some).map_err(|e| {
            CliError::Failure(format!(
                "{} line {}: invalid UTF-8 (at byte {} of the line)",
                self.source,
                self.line_no,
                e.utf8_error().valid_up_to() + 1
            ))
        })
    }
}

/// Opens `--input`. Anything readable is accepted (a regular file, a named pipe, a terminal or
/// `/dev/stdin`), except a directory, which would only fail at the first read with a less clear
/// message. A named pipe opens once a writer does.
fn open_input(path: &str) -> Result<File, CliError> {
    let fail = |e: io::Error| CliError::Failure(format!("cannot open the input '{path}': {e}"));
    if std::fs::metadata(path).map_err(fail)?.is_dir() {
        return Err(CliError::Failure(format!(
            "the input '{path}' is a directory, not a file of lines"
        )));
    }
    File::open(path).map_err(fail)
}

/// The lines as inputs; in pair mode each must hold exactly one tab.
fn to_inputs<'a>(
    texts: &'a [String],
    pairs: bool,
    first_line: usize,
    source: &str,
) -> Result<Vec<Input<'a>>, CliError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if !pairs {
                return Ok(Input::Single(text));
            }
            let line = first_line + i;
            match text.split_once('\t') {
                Some((a, b)) if !b.contains('\t') => Ok(Input::Pair(a, b)),
                Some(_) => Err(CliError::Failure(format!(
                    "{source} line {line}: expected text_a<TAB>text_b, found {} tab-separated \
                     fields",
                    text.split('\t').count()
                ))),
                None => Err(CliError::Failure(format!(
                    "{source} line {line}: expected text_a<TAB>text_b (--pairs), found no tab"
                ))),
            }
        })
        .collect()
}

/// Writes one JSON object per row. Floats are printed in their shortest f32 form.
fn write_predictions(out: &mut impl Write, rt: &Runtime, p: &Predictions) -> io::Result<()> {
    let config = rt.config();
    let regression = config.task == Task::Regression;
    for i in 0..p.len() {
        let row = p.row(i);
        if regression {
            out.write_all(b"{\"score\": ")?;
            serde_json::to_writer(&mut *out, &row[0])?;
        } else {
            let id = p.labels[i];
            out.write_all(b"{\"label\": ")?;
            let name = config.labels.get(id).map_or("", String::as_str);
            serde_json::to_writer(&mut *out, name)?;
            write!(out, ", \"label_id\": {id}, \"probabilities\": [")?;
            for (j, v) in row.iter().enumerate() {
                if j > 0 {
                    out.write_all(b", ")?;
                }
                serde_json::to_writer(&mut *out, v)?;
            }
            out.write_all(b"]")?;
        }
        writeln!(out, ", \"exit_layer\": {}}}", p.exit_layers[i])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_lines() {
        let texts: Vec<String> = vec!["a\tb".into(), "\t".into(), "x".into(), "a\tb\tc".into()];
        let ok = to_inputs(&texts[..2], true, 1, "f").unwrap();
        assert_eq!(ok, vec![Input::Pair("a", "b"), Input::Pair("", "")]);
        let Err(CliError::Failure(e)) = to_inputs(&texts, true, 10, "f") else {
            panic!("expected an error");
        };
        assert!(e.contains("f line 12") && e.contains("no tab"), "{e}");
        let Err(CliError::Failure(e)) = to_inputs(&texts[3..], true, 4, "f") else {
            panic!("expected an error");
        };
        assert!(e.contains("line 4") && e.contains("3 tab-separated"), "{e}");
        assert_eq!(
            to_inputs(&texts[2..3], false, 1, "f").unwrap(),
            vec![Input::Single("x")]
        );
    }

    #[test]
    fn lines_strip_newlines_and_check_utf8() {
        let data: &[u8] = b"one\r\ntwo\n\nlast";
        let mut lines = Lines {
            reader: BufReader::new(Box::new(data) as Box<dyn Read>),
            source: "t".into(),
            line_no: 0,
        };
        let mut got = Vec::new();
        while let Some(l) = lines.next().unwrap() {
            got.push(l);
        }
        assert_eq!(got, vec!["one", "two", "", "last"]);
        let data: &[u8] = b"ok\nbad \xff\n";
        let mut lines = Lines {
            reader: BufReader::new(Box::new(data) as Box<dyn Read>),
            source: "t".into(),
            line_no: 0,
        };
        assert_eq!(lines.next().unwrap().as_deref(), Some("ok"));
        let Err(CliError::Failure(e)) = lines.next() else {
            panic!("expected an error");
        };
        assert!(e.contains("t line 2") && e.contains("byte 5"), "{e}");
    }

    fn lines_of(reader: Box<dyn Read>) -> Lines {
        Lines {
            reader: BufReader::new(reader),
            source: "t".into(),
            line_no: 0,
        }
    }

    #[test]
    fn lines_over_the_limit_are_errors() {
        // Exactly the limit (with a CRLF end) is fine; one byte more is not.
        let mut data = vec![b'a'; MAX_LINE_BYTES];
        data.extend_from_slice(b"\r\n");
        data.extend(vec![b'b'; MAX_LINE_BYTES + 1]);
        data.extend_from_slice(b"\nrest\n");
        let mut lines = lines_of(Box::new(std::io::Cursor::new(data)));
        assert_eq!(lines.next().unwrap().unwrap().len(), MAX_LINE_BYTES);
        let Err(CliError::Failure(e)) = lines.next() else {
            panic!("expected an error");
        };
        assert!(e.contains("t line 2") && e.contains("longer than"), "{e}");
        // The last line, without a line end, is held to the same limit.
        let mut lines = lines_of(Box::new(std::io::Cursor::new(vec![
            b'c';
            MAX_LINE_BYTES + 1
        ])));
        assert!(lines.next().is_err());
        // A stream without line ends stops at the limit instead of growing.
        let mut lines = lines_of(Box::new(std::io::repeat(b'z')));
        let Err(CliError::Failure(e)) = lines.next() else {
            panic!("expected an error");
        };
        assert!(e.contains("t line 1") && e.contains("longer than"), "{e}");
    }
}
