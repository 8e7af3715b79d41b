//! Writing a profile to a path: atomically into a regular file, straight into a pipe or a device.
//!
//! A profile replaces a regular file through a temporary file in the same directory, renamed over it, so a
//! reader (a collector picking up periodic profiles, a person opening the exit profile) never sees half of
//! one. The directory is the real one: a symlink is followed to its target, which is replaced, never the
//! link. A FIFO or a character device (`/dev/stdout`, a pipe to a collector) is written to in place: renaming
//! over it would replace the device node with a file. Every failure of the write, the flush to disk or the
//! rename is an error (a full disk gives `ENOSPC`), and a failed write leaves no temporary file behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Writes `bytes` to `path` (see the module documentation).
///
/// # Errors
/// [`Error::Write`], naming `path`, when the file cannot be created, written, flushed or renamed into place.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let failed = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    // Through the kernel's own resolution first: `/dev/stdout` is a link to a `/proc` link that names no
    // path (`pipe:[…]`), yet opens.
    if is_stream(path) {
        let mut sink = OpenOptions::new().write(true).open(path).map_err(failed)?;
        sink.write_all(bytes)
            .and_then(|()| sink.flush())
            .map_err(failed)
    } else {
        let target = real_path(path).map_err(failed)?;
        replace_atomically(&target, bytes).map_err(failed)
    }
}

/// Whether `path` is a FIFO or a character device, written to in place.
#[cfg(unix)]
pub(crate) fn is_stream(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.file_type().is_fifo() || meta.file_type().is_char_device())
}

/// Whether `path` is a FIFO or a character device: never, where the system has neither.
#[cfg(not(unix))]
pub(crate) fn is_stream(_path: &Path) -> bool {
    false
}

/// `path` with every symlink of its last component followed (its directory as given): the file a write to
/// `path` would reach.
fn real_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    // As the kernel does, give up on a loop of links.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) => dir.join(link),
                    None => link,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// Writes a temporary file beside `target`, flushes it to disk, and renames it over `target`.
fn replace_atomically(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = target.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("heap-sampler-output-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn c_path(path: &Path) -> CString {
        CString::new(path.as_os_str().as_bytes()).unwrap()
    }

    #[test]
    fn a_symlink_is_followed_and_its_target_replaced() {
        let dir = temp_dir("symlink");
        let real = dir.join("real.pb.gz");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.pb.gz");
        std::os::unix::fs::symlink("real.pb.gz", &link).unwrap();
        write(&link, b"new profile").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link is still a link"
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new profile");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fifo_is_written_to_in_place() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("pipe");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c_path(&fifo).as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut read = Vec::new();
                File::open(fifo).unwrap().read_to_end(&mut read).unwrap();
                read
            })
        };
        write(&fifo, b"profile through a pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"profile through a pipe");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_device_is_an_error_and_stays_a_device() {
        let dir = temp_dir("device");
        let full = dir.join("full");
        // /dev/full's numbers: 1, 7. Making a device node needs root (CI runs as root); elsewhere the test
        // writes to /dev/full itself.
        // SAFETY: a valid NUL-terminated path; mknod only creates the node.
        let made = unsafe {
            libc::mknod(
                c_path(&full).as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 7),
            )
        } == 0;
        let device = if made {
            full
        } else {
            PathBuf::from("/dev/full")
        };
        match write(&device, b"a profile") {
            Err(Error::Write { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{source}")
            }
            other => panic!("a write to a full device must fail with ENOSPC: {other:?}"),
        }
        assert!(
            std::fs::metadata(&device)
                .unwrap()
                .file_type()
                .is_char_device()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
