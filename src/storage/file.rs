//! Regular files and block devices, through positional syscalls on tokio's blocking pool.
//!
//! The blocking pool is bounded (see the runtime builder in `main.rs`), so a slow disk queues
//! work instead of starving the runtime. Flush is `fdatasync`; FUA writes are followed by one.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{BlockBackend, IoFuture};

/// A file or block device opened for positional I/O.
#[derive(Debug)]
pub struct FileBackend {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl FileBackend {
    /// Opens a regular file, creating it sparse at `create_size` bytes when it is missing.
    /// An existing file keeps its size; `create_size` does not resize it.
    pub fn open_file(path: &Path, create_size: Option<u64>, read_only: bool) -> io::Result<Self> {
        let exists = path.exists();
        if !exists {
            let size = create_size.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} does not exist and no size was given to create it",
                        path.display()
                    ),
                )
            })?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new().write(true).create_new(true).open(path)?;
            file.set_len(size)?;
            file.sync_all()?;
        }
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file (use `block =` for devices)",
                    path.display()
                ),
            ));
        }
        Ok(FileBackend {
            size: meta.len(),
            file: Arc::new(file),
            path: path.to_owned(),
            read_only,
        })
    }

    /// Opens an existing block device; its size is read by seeking to its end.
    pub fn open_block_device(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.file_type().is_block_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a block device", path.display()),
            ));
        }
        let size = file.seek(SeekFrom::End(0))?;
        Ok(FileBackend {
            size,
            file: Arc::new(file),
            path: path.to_owned(),
            read_only,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || op(&file))
            .await
            .map_err(|e| io::Error::other(format!("storage worker failed: {e}")))?
    }
}

impl BlockBackend for FileBackend {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(self.blocking(move |file| {
            let mut buf = BytesMut::zeroed(len);
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf.freeze())
        }))
    }

    fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
        if self.read_only {
            return Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "medium is read-only",
                ))
            });
        }
        Box::pin(self.blocking(move |file| {
            file.write_all_at(&data, offset)?;
            if fua {
                file.sync_data()?;
            }
            Ok(())
        }))
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(self.blocking(|file| file.sync_data()))
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_a_sparse_file_and_round_trips_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/disk.img");
        let backend = FileBackend::open_file(&path, Some(1 << 20), false).unwrap();
        assert_eq!(backend.size_bytes(), 1 << 20);
        backend
            .write_at(4096, Bytes::from(vec![7u8; 512]), true)
            .await
            .unwrap();
        backend.flush().await.unwrap();
        assert_eq!(backend.read_at(4096, 512).await.unwrap(), vec![7u8; 512]);
        // Reopening keeps the size and the data; the size argument does not resize.
        let again = FileBackend::open_file(&path, Some(4096), false).unwrap();
        assert_eq!(again.size_bytes(), 1 << 20);
        assert_eq!(again.read_at(4096, 1).await.unwrap()[0], 7);
        assert!(again.read_at((1 << 20) - 1, 2).await.is_err());
    }

    #[test]
    fn missing_file_without_size_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileBackend::open_file(&dir.path().join("nope"), None, false).unwrap_err();
        assert!(err.to_string().contains("no size"));
    }

    #[tokio::test]
    async fn read_only_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.img");
        FileBackend::open_file(&path, Some(4096), false).unwrap();
        let ro = FileBackend::open_file(&path, None, true).unwrap();
        assert!(
            ro.write_at(0, Bytes::from_static(b"x"), false)
                .await
                .is_err()
        );
    }
}
