//! A small blocking HTTP/1.1 client for these APIs over a Unix socket: one
//! request per connection (`Connection: close`), JSON bodies, responses
//! framed by `Content-Length`, chunked transfer or close. `vmm ctl` uses
//! it; so can anything that talks to a daemon or a VMM.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response may have.
const MAX_FIELDS: usize = 64;

/// Why a request got no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket, or it is not there.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The answer is not HTTP this client understands.
    #[error("{path}: malformed HTTP response: {why}")]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// A client for the API on one Unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
    stream_timeout: Option<Duration>,
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// The status code.
    pub status: u16,
    /// Header fields as sent (names as the server spelled them).
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `fault_message` of an error body, or the body itself when it
    /// has none.
    pub fn fault_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| self.text().trim().to_string())
    }
}

/// A response whose body is read as it arrives (a stream).
pub struct StreamingResponse {
    /// The status code.
    pub status: u16,
    /// Header fields as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked, until the server ends it.
    pub body: Box<dyn BufRead + Send>,
}

impl Client {
    /// A client for the socket at `path`, with a 30 s timeout on each read
    /// and write, and none on reading a stream's body.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client {
            path: path.into(),
            timeout: Some(Duration::from_secs(30)),
            stream_timeout: None,
        }
    }

    /// Changes the timeout on each read and write (`None`: wait forever).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Changes the timeout on each read of a stream's body (`None`, the
    /// default: wait forever for the next piece).
    pub fn with_stream_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stream_timeout = timeout;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `method target` with an optional JSON body and reads the
    /// whole response.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        json: Option<&str>,
    ) -> Result<ClientResponse, ClientError> {
        let mut res = self.open(method, target, json, self.timeout)?;
        let mut body = Vec::new();
        res.body
            .read_to_end(&mut body)
            .map_err(|e| self.io_err(e))?;
        Ok(ClientResponse {
            status: res.status,
            headers: res.headers,
            body,
        })
    }

    /// Sends `method target` and returns once the head has arrived; the
    /// body is read from the result as the server sends it, with the
    /// stream timeout (by default none) once the head is in.
    pub fn stream(
        &self,
        method: &str,
        target: &str,
        json: Option<&str>,
    ) -> Result<StreamingResponse, ClientError> {
        self.open(method, target, json, self.stream_timeout)
    }

    fn open(
        &self,
        method: &str,
        target: &str,
        json: Option<&str>,
        body_timeout: Option<Duration>,
    ) -> Result<StreamingResponse, ClientError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        stream
            .set_read_timeout(self.timeout)
            .and_then(|()| stream.set_write_timeout(self.timeout))
            .map_err(|e| self.io_err(e))?;
        let mut out = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: */*\r\n"
        );
        if let Some(json) = json {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            ));
        } else {
            out.push_str("\r\n");
        }
        stream
            .write_all(out.as_bytes())
            .map_err(|e| self.io_err(e))?;

        let mut reader = BufReader::new(stream);
        let (status, headers) = self.read_head(&mut reader)?;
        reader
            .get_ref()
            .set_read_timeout(body_timeout)
            .map_err(|e| self.io_err(e))?;
        let body: Box<dyn BufRead + Send> = if status == 204 || status == 304 || method == "HEAD" {
            Box::new(io::empty())
        } else if find_header(&headers, "transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            Box::new(BufReader::new(Chunked::new(reader)))
        } else if let Some(len) = find_header(&headers, "content-length") {
            let len: u64 = len.trim().parse().map_err(|_| ClientError::Malformed {
                path: self.path.clone(),
                why: format!("bad Content-Length {len:?}"),
            })?;
            Box::new(reader.take(len))
        } else {
            Box::new(reader)
        };
        Ok(StreamingResponse {
            status,
            headers,
            body,
        })
    }

    /// Reads the status line and header fields (skipping 1xx answers).
    fn read_head(
        &self,
        reader: &mut BufReader<UnixStream>,
    ) -> Result<(u16, Vec<(String, String)>), ClientError> {
        loop {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let n = reader
                    .by_ref()
                    .take(1 + MAX_HEAD as u64 - head.len() as u64)
                    .read_until(b'\n', &mut head)
                    .map_err(|e| self.io_err(e))?;
                if n == 0 {
                    return Err(self.malformed(if head.is_empty() {
                        "the server closed the connection without answering".into()
                    } else {
                        "the connection closed in the middle of the head".into()
                    }));
                }
                if head.len() > MAX_HEAD {
                    return Err(self.malformed(format!("head larger than {MAX_HEAD} bytes")));
                }
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut res = httparse::Response::new(&mut fields);
            match res.parse(&head) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => return Err(self.malformed("incomplete".into())),
                Err(e) => return Err(self.malformed(e.to_string())),
            }
            let status = res.code.unwrap_or(0);
            if (100..200).contains(&status) {
                continue;
            }
            let headers = res
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect();
            return Ok((status, headers));
        }
    }

    fn io_err(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn malformed(&self, why: String) -> ClientError {
        ClientError::Malformed {
            path: self.path.clone(),
            why,
        }
    }
}

fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Decodes a chunked body.
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.inner
            .by_ref()
            .take(4096)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body ended early",
            ));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or_default().trim();
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                // Trailer fields, then the empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body ended early",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 && !self.line()?.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_with_extensions_and_trailers() {
        let raw = b"5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: a\r\n\r\nIGNORED";
        let mut out = String::new();
        Chunked::new(&raw[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
        let mut out = String::new();
        let err = Chunked::new(&b"5\r\nhel"[..])
            .read_to_string(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = Chunked::new(&b"zz\r\n"[..])
            .read_to_string(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
