//! Zero-copy forwarding with `splice(2)`: socket → pipe → socket without the bytes entering
//! user space. Pipes are created only when a connection turns bulk and are kept in a small
//! per-worker pool afterwards, so idle connections hold no pipe (each pipe is two fds).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call: the default pipe capacity (16 pages).
pub const PIPE_CHUNK: usize = 64 * 1024;
const POOL_MAX: usize = 32;

pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    pub fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let (r, w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        Ok(Pipe { r, w })
    }

    /// Returns an empty pipe to the pool (a pipe with bytes in it is just closed).
    pub fn give_back(self) {
        PIPES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(self);
            }
        });
    }

    /// Moves up to [`PIPE_CHUNK`] bytes from `src` into this (empty) pipe; 0 means EOF.
    /// The pipe is empty on entry, so EAGAIN can only mean the socket has nothing.
    pub async fn fill(&self, src: &TcpStream) -> io::Result<usize> {
        loop {
            src.readable().await?;
            let r = src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, self.w.as_fd(), None, PIPE_CHUNK, flags())
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves exactly `n` bytes from this pipe to `dst`.
    pub async fn drain(
        &self,
        dst: &TcpStream,
        mut n: usize,
        stalled: Option<&std::sync::atomic::AtomicU64>,
    ) -> io::Result<()> {
        while n > 0 {
            dst.writable().await?;
            let r = dst.try_io(Interest::WRITABLE, || {
                splice(self.r.as_fd(), None, dst.as_fd(), None, n, flags()).map_err(io::Error::from)
            });
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => n -= m.min(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    crate::copy::stall_begins(stalled);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        crate::copy::stall_ends(stalled);
        Ok(())
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}
