//! Where connections come from: the listening sockets every loop accepts on, and the address they serve.
//!
//! Three sources (`Config::socket`):
//! - TCP `host:port` (the default): one listening socket, and every loop accepts on its own duplicate of
//!   it. The kernel hands each new connection to one of the accepts waiting on that one queue, so only a
//!   loop that is free to accept takes it: a loop busy running Python is not waiting and gets none. (One
//!   SO_REUSEPORT listener per loop, what this was before, hashed half of the simultaneous connections of
//!   two loops onto the same one, where a busy loop left them queued while the other loop idled:
//!   docs/architecture.md, "How connections reach a loop".)
//! - a Unix domain socket path (`--uds`, a proxy such as nginx on the same host): Linux has no
//!   SO_REUSEPORT for Unix sockets, so one socket is bound and every loop accepts on its own duplicate of
//!   it (the kernel hands each connection to one of the waiting accepts).
//! - an inherited listening socket (`--fd`, systemd socket activation or a supervisor that bound it): TCP
//!   or Unix, shared the same way.
//!
//! Invariants: a socket file is only ever removed by whoever created it, and only while it is still the
//! file that was created (`SocketFile`); a path something is listening on is never taken over.
//!
//! Over 500 lines: the tests (real sockets, Unix socket files, inherited descriptors) are ~190 of them.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Pending connections the listening socket queues (`--backlog`; the kernel caps it at
/// `net.core.somaxconn`). Every loop accepts from this one queue (under `--workers`: one per worker).
pub const DEFAULT_BACKLOG: i32 = 1024;

/// What the server listens on, besides the default TCP `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSource {
    /// A Unix domain socket at this path, created here (`--uds`).
    UnixPath(PathBuf),
    /// An already bound socket this process inherited (`--fd`); the pool takes ownership of it.
    Fd(RawFd),
    /// One inherited socket per loop, in loop order (one socket: shared by every loop, as `Fd`): TCP
    /// listeners a supervisor holds, so that they outlive the worker (a replacement accepts on the same
    /// ones and no queued connection is lost when a worker stops). percore's own `--workers` supervisor
    /// passes one socket per worker.
    FdPerLoop(Vec<RawFd>),
}

/// A listening socket, before a loop turns it into its async form.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The address connections arrive on: what ASGI's `server` and the native `Request.server` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAddress {
    Tcp(SocketAddr),
    /// The socket's path (or `@name` for Linux's abstract namespace, `""` when unnamed).
    Unix(Arc<str>),
}

impl LocalAddress {
    /// `http://HOST:PORT` (`https` when `secure`) or `unix:PATH`, for banners and logs.
    pub fn url(&self, secure: bool) -> String {
        match self {
            LocalAddress::Tcp(address) if secure => format!("https://{address}"),
            LocalAddress::Tcp(address) => format!("http://{address}"),
            LocalAddress::Unix(path) if secure => format!("unix:{path} (TLS)"),
            LocalAddress::Unix(path) => format!("unix:{path}"),
        }
    }
}

/// Why listening failed: what was being done and on what (`kind`), and the OS error behind it when
/// there is one (`source`). Its Display is the one line the user sees, said so that they can act on it.
#[derive(Debug)]
pub struct BindError {
    kind: BindErrorKind,
    source: Option<std::io::Error>,
}

/// What listening failed at, with the address, path or descriptor concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindErrorKind {
    /// `host` could not be resolved.
    Resolve { host: String },
    /// `host` resolved to no address.
    NoAddress { host: String },
    /// Something else listens on the address.
    AddressInUse { address: SocketAddr },
    /// Listening on the address failed otherwise.
    Listen { address: SocketAddr },
    /// The address a socket was bound to could not be read back.
    UnreadableAddress,
    /// A server accepts on the Unix socket `path` already.
    UnixInUse { path: PathBuf },
    /// Whether something accepts on the Unix socket `path` is unknown (e.g. another user's socket).
    UnixMaybeInUse { path: PathBuf },
    /// The stale Unix socket `path` could not be removed.
    UnixStale { path: PathBuf },
    /// `path` exists and is not a socket.
    NotASocketFile { path: PathBuf },
    /// Listening on the Unix socket `path` failed.
    UnixListen { path: PathBuf },
    /// The inherited descriptor (`--fd`) is not open.
    FdNotOpen { fd: RawFd },
    /// The inherited descriptor is not a socket.
    FdNotASocket { fd: RawFd },
    /// The inherited descriptor is not a stream socket.
    FdNotAStream { fd: RawFd },
    /// The inherited socket cannot listen.
    FdListen { fd: RawFd },
    /// A supervisor passed `given` sockets for `loops` loops.
    FdCount { given: usize, loops: usize },
    /// The listening socket could not be duplicated for every loop.
    Share,
    /// The metrics port is taken.
    MetricsInUse { host: String, port: u16 },
    /// Listening on the metrics port failed otherwise (its host included).
    MetricsListen { host: String, port: u16 },
}

impl BindError {
    /// A failure of `kind`, caused by `source`.
    pub fn new(kind: BindErrorKind, source: std::io::Error) -> Self {
        BindError {
            kind,
            source: Some(source),
        }
    }

    /// What failed.
    pub fn kind(&self) -> &BindErrorKind {
        &self.kind
    }
}

impl From<BindErrorKind> for BindError {
    fn from(kind: BindErrorKind) -> Self {
        BindError { kind, source: None }
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BindErrorKind as K;
        match &self.kind {
            K::Resolve { host } => write!(f, "cannot resolve host {host:?}"),
            K::NoAddress { host } => write!(f, "host {host:?} has no address"),
            K::AddressInUse { address } => write!(f, "address {address} is already in use"),
            K::Listen { address } => write!(f, "cannot listen on {address}"),
            K::UnreadableAddress => f.write_str("cannot read the bound address"),
            K::UnixInUse { path } => write!(
                f,
                "unix socket {} is already in use (a server accepts on it)",
                path.display()
            ),
            K::UnixMaybeInUse { path } => write!(
                f,
                "cannot tell whether unix socket {} is in use, so it is left alone",
                path.display()
            ),
            K::UnixStale { path } => {
                write!(f, "cannot replace the stale socket {}", path.display())
            }
            K::NotASocketFile { path } => write!(
                f,
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            ),
            K::UnixListen { path } => {
                write!(f, "cannot listen on unix socket {}", path.display())
            }
            K::FdNotOpen { fd } => {
                write!(f, "--fd {fd}: not an open file descriptor")?;
                // The OS error in parentheses: "(Bad file descriptor (os error 9))".
                if let Some(source) = &self.source {
                    write!(f, " ({source})")?;
                }
                return Ok(());
            }
            K::FdNotASocket { fd } => write!(f, "--fd {fd}: not a socket"),
            K::FdNotAStream { fd } => write!(f, "--fd {fd}: not a stream socket"),
            K::FdListen { fd } => write!(f, "--fd {fd}: cannot listen"),
            K::FdCount { given, loops } => {
                write!(f, "{given} inherited listening sockets for {loops} loop(s)")
            }
            K::Share => f.write_str("cannot share the listening socket"),
            K::MetricsInUse { host, port } => {
                // The OS error says nothing the line does not.
                return write!(f, "metrics port {port} on {host} is already in use");
            }
            K::MetricsListen { host, port } => {
                write!(f, "cannot listen for metrics on {host}:{port}")
            }
        }?;
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// The listeners of a pool: one per loop (usually duplicates of one socket), all on `address`.
#[derive(Debug)]
pub struct Bound {
    pub listeners: Vec<Listener>,
    pub address: LocalAddress,
    /// The socket file this process created, removed when the pool is done with it.
    pub socket_file: Option<SocketFile>,
    /// Whether the loops' listeners are duplicates of one socket (one accept queue for all), rather than
    /// a socket each (`SocketSource::FdPerLoop` with several).
    pub shared_queue: bool,
}

/// Listens where `source` says (or on TCP `host:port`): one socket, duplicated for every loop.
///
/// `shared_port`: see `bind_tcp`.
pub fn bind(
    source: Option<&SocketSource>,
    host: &str,
    port: u16,
    loops: usize,
    shared_port: bool,
    backlog: i32,
) -> Result<Bound, BindError> {
    match source {
        None => {
            let mut listeners = bind_tcp(host, port, 1, shared_port, backlog)?;
            share(Socket::from(listeners.remove(0)), loops, None)
        }
        Some(SocketSource::UnixPath(path)) => {
            let (socket, file) = bind_unix(path, backlog)?;
            share(socket, loops, Some(file))
        }
        Some(SocketSource::Fd(fd)) => share(inherited(*fd, backlog)?, loops, None),
        Some(SocketSource::FdPerLoop(fds)) if fds.len() == 1 => {
            share(inherited(fds[0], backlog)?, loops, None)
        }
        Some(SocketSource::FdPerLoop(fds)) => {
            if fds.len() != loops {
                return Err(BindErrorKind::FdCount {
                    given: fds.len(),
                    loops,
                }
                .into());
            }
            let sockets = fds
                .iter()
                .map(|&fd| inherited(fd, backlog))
                .collect::<Result<Vec<_>, _>>()?;
            let address = address_of(&sockets[0])?;
            Ok(Bound {
                listeners: sockets.into_iter().map(|s| listener(s, &address)).collect(),
                address,
                socket_file: None,
                shared_queue: false,
            })
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, BindError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| BindError::new(BindErrorKind::Resolve { host: host.into() }, e))?
        .next()
        .ok_or_else(|| BindErrorKind::NoAddress { host: host.into() }.into())
}

fn reuseport_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Binds `count` TCP listeners in one SO_REUSEPORT group on the same address (a server binds one and
/// shares it between its loops; a `--workers` supervisor binds one per worker).
///
/// SO_REUSEPORT would let us silently share a port with another process of the same user, so the port
/// is first probed with a plain (non-reuseport) bind: if anything else holds it, that fails with
/// "address in use" and we report it instead of splitting traffic with a stranger.
///
/// `shared_port`: a `--workers` supervisor has already probed and reserved the port for its worker
/// processes, which must join each other's SO_REUSEPORT group, so they skip the probe (it would fail on
/// their siblings' listeners). Port 0 is always probed: it is how the kernel picks one port for all of them.
pub fn bind_tcp(
    host: &str,
    port: u16,
    count: usize,
    shared_port: bool,
    backlog: i32,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let mut addr = resolve(host, port)?;
    let busy = |address: SocketAddr, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            BindErrorKind::AddressInUse { address }.into()
        } else {
            BindError::new(BindErrorKind::Listen { address }, e)
        }
    };
    let mut listeners = Vec::with_capacity(count);
    if port == 0 || !shared_port {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| busy(addr, e))?;
        probe.set_reuse_address(true).map_err(|e| busy(addr, e))?;
        probe.bind(&addr.into()).map_err(|e| busy(addr, e))?;
        if port == 0 {
            // Let the kernel pick once, then every listener listens on that same port.
            let picked = probe
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or(BindErrorKind::UnreadableAddress)?;
            addr.set_port(picked.port());
        }
    }
    for _ in 0..count {
        listeners.push(reuseport_listener(addr, backlog).map_err(|e| busy(addr, e))?);
    }
    Ok(listeners)
}

/// The socket file a server created, identified by its inode so that a file someone put in its place
/// since (a newer server on the same path) is left alone. Removed on drop.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path) {
            if (metadata.dev(), metadata.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Creates a listening Unix domain socket at `path`.
///
/// A socket file left by a server that is gone (nothing accepts on it) is replaced, as asyncio and
/// uvicorn do; a path something listens on, or that is not a socket, is an error. The file is made
/// readable and writable by everyone (0o666, as uvicorn), or keeps the mode of the file it replaces:
/// the proxy in front usually runs as another user.
pub fn bind_unix(path: &Path, backlog: i32) -> Result<(Socket, SocketFile), BindError> {
    let mut mode = 0o666;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            // Only "connection refused" proves nothing listens: a socket we may not connect to (another
            // user's, EACCES) may still be served, so it is not ours to remove.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(BindErrorKind::UnixInUse { path: path.into() }.into()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    let kind = BindErrorKind::UnixMaybeInUse { path: path.into() };
                    return Err(BindError::new(kind, e));
                }
            }
            mode = metadata.permissions().mode() & 0o777;
            std::fs::remove_file(path)
                .map_err(|e| BindError::new(BindErrorKind::UnixStale { path: path.into() }, e))?;
        }
        Ok(_) => return Err(BindErrorKind::NotASocketFile { path: path.into() }.into()),
        Err(_) => {}
    }
    let cannot =
        |e: std::io::Error| BindError::new(BindErrorKind::UnixListen { path: path.into() }, e);
    let address = SockAddr::unix(path).map_err(cannot)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(cannot)?;
    socket.bind(&address).map_err(cannot)?;
    let metadata = std::fs::symlink_metadata(path).map_err(cannot)?;
    let file = SocketFile {
        path: path.to_owned(),
        identity: (metadata.dev(), metadata.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(cannot)?;
    socket.listen(backlog).map_err(cannot)?;
    Ok((socket, file))
}

/// Takes ownership of inherited descriptor `fd`, which must be a bound stream socket (TCP or Unix).
fn inherited(fd: RawFd, backlog: i32) -> Result<Socket, BindError> {
    let socket = match crate::sys::adopt_socket(fd) {
        Ok(socket) => socket,
        Err(crate::sys::AdoptError::NotOpen(e)) => {
            return Err(BindError::new(BindErrorKind::FdNotOpen { fd }, e))
        }
        Err(crate::sys::AdoptError::NotASocket) => {
            return Err(BindErrorKind::FdNotASocket { fd }.into())
        }
    };
    match socket.r#type() {
        Ok(kind) if kind == Type::STREAM => {}
        _ => {
            // Not ours to close: give the descriptor back untouched.
            std::mem::forget(socket);
            return Err(BindErrorKind::FdNotAStream { fd }.into());
        }
    }
    // Listening again only updates the backlog of a socket that already listens (systemd's do).
    socket
        .listen(backlog)
        .map_err(|e| BindError::new(BindErrorKind::FdListen { fd }, e))?;
    Ok(socket)
}

/// One duplicate of `socket` per loop.
fn share(
    socket: Socket,
    loops: usize,
    socket_file: Option<SocketFile>,
) -> Result<Bound, BindError> {
    let address = address_of(&socket)?;
    let mut sockets = Vec::with_capacity(loops);
    for _ in 1..loops {
        let copy = socket
            .try_clone()
            .map_err(|e| BindError::new(BindErrorKind::Share, e))?;
        sockets.push(copy);
    }
    sockets.push(socket);
    Ok(Bound {
        listeners: sockets.into_iter().map(|s| listener(s, &address)).collect(),
        address,
        socket_file,
        shared_queue: loops > 1,
    })
}

fn address_of(socket: &Socket) -> Result<LocalAddress, BindError> {
    let local = socket
        .local_addr()
        .map_err(|e| BindError::new(BindErrorKind::UnreadableAddress, e))?;
    Ok(match local.as_socket() {
        Some(address) => LocalAddress::Tcp(address),
        None => LocalAddress::Unix(unix_name(&local).into()),
    })
}

fn listener(socket: Socket, address: &LocalAddress) -> Listener {
    match address {
        LocalAddress::Tcp(_) => Listener::Tcp(socket.into()),
        LocalAddress::Unix(_) => Listener::Unix(socket.into()),
    }
}

fn unix_name(address: &SockAddr) -> String {
    if let Some(path) = address.as_pathname() {
        return path.display().to_string();
    }
    match address.as_abstract_namespace() {
        Some(name) => format!("@{}", String::from_utf8_lossy(name)),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn workers_share_a_port_that_other_servers_cannot_take() {
        let first = bind_tcp("127.0.0.1", 0, 2, false, DEFAULT_BACKLOG).unwrap();
        let port = first[0].local_addr().unwrap().port();
        assert!(first.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Another server (no supervisor reserved the port for it) probes and is refused.
        let refused = bind_tcp("127.0.0.1", port, 1, false, DEFAULT_BACKLOG).unwrap_err();
        assert!(refused.to_string().contains("already in use"), "{refused}");
        // A sibling worker joins the SO_REUSEPORT group.
        let sibling = bind_tcp("127.0.0.1", port, 2, true, DEFAULT_BACKLOG).unwrap();
        assert!(sibling
            .iter()
            .all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn every_loop_accepts_from_one_tcp_queue() {
        use std::os::fd::AsRawFd;
        let bound = bind(None, "127.0.0.1", 0, 3, false, DEFAULT_BACKLOG).unwrap();
        assert_eq!(bound.listeners.len(), 3);
        let LocalAddress::Tcp(address) = bound.address else {
            panic!("not TCP")
        };
        // Duplicates of one socket (same inode), not three SO_REUSEPORT listeners each with its own queue.
        let inode = |listener: &Listener| {
            let Listener::Tcp(listener) = listener else {
                panic!("not TCP")
            };
            std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
                .map(|m| m.ino())
                .unwrap()
        };
        let first = inode(&bound.listeners[0]);
        assert!(bound.listeners.iter().all(|l| inode(l) == first));
        // So whichever loop accepts first takes a connection, here the last one.
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client.write_all(b"ping").unwrap();
        let Listener::Tcp(last) = &bound.listeners[2] else {
            panic!("not TCP")
        };
        let (mut accepted, _) = last.accept().unwrap();
        let mut received = [0; 4];
        accepted.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"ping");
        // The busy-port probe still refuses a second server.
        let refused = bind(None, "127.0.0.1", address.port(), 1, false, DEFAULT_BACKLOG);
        assert!(refused.unwrap_err().to_string().contains("already in use"));
    }

    fn bind_from(source: SocketSource, loops: usize) -> Result<Bound, BindError> {
        bind(Some(&source), "", 0, loops, false, DEFAULT_BACKLOG)
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("percore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_unix_socket_is_shared_by_every_loop_and_removed_when_done() {
        let dir = scratch_dir("uds");
        let path = dir.join("app.sock");
        let bound = bind_from(SocketSource::UnixPath(path.clone()), 3).unwrap();
        assert_eq!(bound.listeners.len(), 3);
        assert_eq!(
            bound.address,
            LocalAddress::Unix(path.display().to_string().into())
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        // A connection is accepted by whichever loop's duplicate accepts first: here the last one.
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        client.write_all(b"ping").unwrap();
        let Listener::Unix(last) = &bound.listeners[2] else {
            panic!("not a unix listener")
        };
        let (mut accepted, _) = last.accept().unwrap();
        let mut received = [0; 4];
        accepted.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"ping");
        // A second server on the same path is refused while this one listens.
        let refused = bind_unix(&path, DEFAULT_BACKLOG).unwrap_err();
        assert!(refused.to_string().contains("already in use"), "{refused}");
        drop(bound);
        assert!(!path.exists(), "the socket file outlived its server");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_other_files_are_not() {
        let dir = scratch_dir("stale");
        let path = dir.join("app.sock");
        let (socket, file) = bind_unix(&path, DEFAULT_BACKLOG).unwrap();
        std::mem::forget(file); // the server "crashed": its file stays, nothing listens
        drop(socket);
        let (_socket, _file) =
            bind_unix(&path, DEFAULT_BACKLOG).expect("a stale socket is replaced");
        let plain = dir.join("notes.txt");
        std::fs::write(&plain, "keep me").unwrap();
        let refused = bind_unix(&plain, DEFAULT_BACKLOG).unwrap_err();
        assert!(refused.to_string().contains("not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_socket_file_replaced_by_another_server_is_left_alone() {
        let dir = scratch_dir("replaced");
        let path = dir.join("app.sock");
        let (socket, file) = bind_unix(&path, DEFAULT_BACKLOG).unwrap();
        drop(socket);
        // Moved aside (not removed: a freed inode number may be reused at once by the next file).
        std::fs::rename(&path, dir.join("old.sock")).unwrap();
        let (_newer, newer_file) = bind_unix(&path, DEFAULT_BACKLOG).unwrap();
        drop(file); // the old server exits after the new one took the path
        assert!(
            path.exists(),
            "the old server removed the new server's socket"
        );
        drop(newer_file);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn inherited_listeners_one_per_loop_keep_their_sockets() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let held = bind_tcp("127.0.0.1", 0, 2, false, DEFAULT_BACKLOG).unwrap();
        let port = held[0].local_addr().unwrap().port();
        let fds: Vec<RawFd> = held.iter().map(|l| l.as_raw_fd()).collect();
        let refused = bind_from(SocketSource::FdPerLoop(fds.clone()), 3);
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("2 inherited listening sockets for 3 loop(s)"));
        // The pool takes ownership of the descriptors it is given (a worker's inherited copies).
        let given = held.into_iter().map(IntoRawFd::into_raw_fd).collect();
        let bound = bind_from(SocketSource::FdPerLoop(given), 2).unwrap();
        assert_eq!(bound.listeners.len(), 2);
        assert_eq!(
            bound.address,
            LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
        );
        let Listener::Tcp(second) = &bound.listeners[1] else {
            panic!("not TCP")
        };
        assert_eq!(
            second.as_raw_fd(),
            fds[1],
            "each loop gets its own socket, not a duplicate"
        );
    }

    #[test]
    fn an_inherited_descriptor_must_be_a_stream_socket() {
        use std::os::fd::IntoRawFd;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let bound = bind_from(SocketSource::Fd(tcp.into_raw_fd()), 2).unwrap();
        assert_eq!(bound.listeners.len(), 2);
        assert_eq!(
            bound.address,
            LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
        );
        let file = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let refused = bind_from(SocketSource::Fd(file), 1).unwrap_err();
        assert!(refused.to_string().contains("not a socket"), "{refused}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let refused = bind_from(SocketSource::Fd(udp.into_raw_fd()), 1).unwrap_err();
        assert!(
            refused.to_string().contains("not a stream socket"),
            "{refused}"
        );
        let closed = bind_from(SocketSource::Fd(987_654), 1).unwrap_err();
        assert!(
            closed.to_string().contains("not an open file descriptor"),
            "{closed}"
        );
    }
}
