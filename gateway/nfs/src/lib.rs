//! cairn-nfs: NFSv3 export of the uniform namespace through `nfsserve` (NFS and MOUNT on one TCP
//! port, no portmapper registration: clients name the port, e.g. libnfs
//! `nfs://HOST/?version=3&nfsport=PORT&mountport=PORT`).
//!
//! ```text
//!  TCP ──> serve_nfs   nfsserve's listener (XDR, RPC, MOUNT), stopped by the shutdown signal
//!            └─> CairnNfs: nfsserve::vfs::NFSFileSystem    one call per NFS procedure
//!                  ├─ fattr / nfs_time / set_time   inode attributes as fattr3 and back
//!                  ├─ fs_status                     FsError as nfsstat3
//!                  ├─ file handles                  (inode, generation), 16 bytes
//!                  └─ readdir cookies               file id → name, a bounded table
//!                        └─> cairn_client::FsClient   namespace and data of the cluster
//!  Purger: deletes the data of removed files (the purge queue), in the background
//! ```
//!
//! [`CairnNfs`] implements `nfsserve::vfs::NFSFileSystem` over [`FsClient`]: file ids are inode
//! numbers (never reused), file handles carry `(inode, generation)`, and errors map onto
//! `nfsstat3`. NFS is stateless, so every write goes straight to the OSDs and, when it ends
//! past the end of file, grows the size in the namespace before it is answered (`FILE_SYNC`
//! semantics: nothing is pending, a COMMIT has nothing left to do). A REMOVE (or a RENAME over
//! a file) is answered once its namespace entry committed, which put the file on the purge
//! queue; the export's [`Purger`] deletes the data moments later (NFSv3 has no open state to
//! wait for), and a gateway killed before that leaves it on the queue for the next purger.
//!
//! Limits of nfsserve 0.10: no LINK, MKNOD or COMMIT procedures, fixed FSSTAT figures, and
//! directory cookies that are file ids; this module maps a cookie back to a name with a bounded
//! table of names it listed (falling back to a scan from the start of the directory).

use cairn_client::{ClientError, Cluster, FsClient, Purger, SetAttrs, PURGE_EVERY};
use cairn_proto::fs::{FileKind, FsError, Ino, InodeAttr, SetTime, READDIR_MAX, ROOT_INO};
use nfsserve::nfs::{
    fattr3, fileid3, filename3, ftype3, nfs_fh3, nfspath3, nfsstat3, nfstime3, sattr3, set_atime,
    set_gid3, set_mode3, set_mtime, set_size3, set_uid3, specdata3,
};
use nfsserve::tcp::{NFSTcp, NFSTcpListener};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// Names remembered for readdir cookies before the table is cleared.
const COOKIE_NAMES_MAX: usize = 200_000;
/// Attribute lookups in flight for one readdir page.
const ATTR_PARALLEL: usize = 32;

/// The NFS view of a namespace.
pub struct CairnNfs {
    fs: FsClient,
    /// Deletes the data of files removed here.
    purger: Purger,
    /// Generation of each inode seen, for file handles (inode numbers are never reused, so a
    /// handle of an unknown generation is still safe to accept).
    generations: Mutex<HashMap<Ino, u64>>,
    /// (directory, file id) → name, for readdir cookies.
    cookie_names: Mutex<HashMap<(Ino, Ino), String>>,
}

fn nfs_err(e: &ClientError) -> nfsstat3 {
    match e.fs() {
        Some(f) => fs_status(f),
        None if e.is_no_space() => nfsstat3::NFS3ERR_NOSPC,
        None => {
            tracing::warn!(error = %e, "nfs: cluster error");
            nfsstat3::NFS3ERR_IO
        }
    }
}

/// The NFSv3 status of a namespace error.
pub fn fs_status(e: FsError) -> nfsstat3 {
    match e {
        FsError::NotPermitted => nfsstat3::NFS3ERR_PERM,
        FsError::NotFound | FsError::NoData => nfsstat3::NFS3ERR_NOENT,
        FsError::AccessDenied => nfsstat3::NFS3ERR_ACCES,
        FsError::Exists => nfsstat3::NFS3ERR_EXIST,
        FsError::CrossDevice => nfsstat3::NFS3ERR_XDEV,
        FsError::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        FsError::IsDir => nfsstat3::NFS3ERR_ISDIR,
        FsError::Invalid | FsError::Range | FsError::Loop => nfsstat3::NFS3ERR_INVAL,
        FsError::FileTooBig | FsError::TooBig => nfsstat3::NFS3ERR_FBIG,
        FsError::NoSpace => nfsstat3::NFS3ERR_NOSPC,
        FsError::TooManyLinks => nfsstat3::NFS3ERR_MLINK,
        FsError::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        FsError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        FsError::Stale => nfsstat3::NFS3ERR_STALE,
        FsError::BadHandle => nfsstat3::NFS3ERR_BADHANDLE,
        FsError::WouldBlock => nfsstat3::NFS3ERR_JUKEBOX,
        // NFSv3 has no locks of its own (NLM is separate): no NFS call waits for one.
        FsError::Deadlock => nfsstat3::NFS3ERR_SERVERFAULT,
    }
}

fn name_of(n: &filename3) -> Result<String, nfsstat3> {
    String::from_utf8(n.0.clone()).map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

fn nfs_time(ns: i64) -> nfstime3 {
    let secs = ns.div_euclid(1_000_000_000);
    nfstime3 {
        seconds: u32::try_from(secs.max(0)).unwrap_or(u32::MAX),
        nseconds: ns.rem_euclid(1_000_000_000) as u32,
    }
}

fn set_time(t: nfstime3) -> SetTime {
    SetTime::At(i64::from(t.seconds) * 1_000_000_000 + i64::from(t.nseconds))
}

fn fattr(a: &InodeAttr) -> fattr3 {
    let (ftype, type_bits) = match a.kind {
        FileKind::Dir => (ftype3::NF3DIR, 0o040000),
        FileKind::File => (ftype3::NF3REG, 0o100000),
        FileKind::Symlink => (ftype3::NF3LNK, 0o120000),
    };
    fattr3 {
        ftype,
        mode: type_bits | (a.mode & 0o7777),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.size,
        rdev: specdata3::default(),
        fsid: 0xCA1A,
        fileid: a.ino,
        atime: nfs_time(a.atime_ns),
        mtime: nfs_time(a.mtime_ns),
        ctime: nfs_time(a.ctime_ns),
    }
}

fn set_attrs(s: &sattr3) -> SetAttrs {
    SetAttrs {
        mode: match s.mode {
            set_mode3::mode(m) => Some(m),
            set_mode3::Void => None,
        },
        uid: match s.uid {
            set_uid3::uid(u) => Some(u),
            set_uid3::Void => None,
        },
        gid: match s.gid {
            set_gid3::gid(g) => Some(g),
            set_gid3::Void => None,
        },
        size: match s.size {
            set_size3::size(n) => Some(n),
            set_size3::Void => None,
        },
        atime: match s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(SetTime::Now),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(set_time(t)),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(SetTime::Now),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(set_time(t)),
        },
    }
}

impl CairnNfs {
    /// Removed files are handed to `purger`.
    pub fn new(fs: FsClient, purger: Purger) -> CairnNfs {
        CairnNfs {
            fs,
            purger,
            generations: Mutex::new(HashMap::from([(ROOT_INO, 1)])),
            cookie_names: Mutex::default(),
        }
    }

    /// Remember what an attribute says about handles, and convert it.
    fn seen(&self, a: &InodeAttr) -> fattr3 {
        self.generations
            .lock()
            .expect("generations lock")
            .insert(a.ino, a.generation);
        fattr(a)
    }

    async fn attr(&self, ino: Ino) -> Result<InodeAttr, nfsstat3> {
        let a = self.fs.getattr(ino).await.map_err(|e| nfs_err(&e))?;
        self.seen(&a);
        Ok(a)
    }

    async fn make(
        &self,
        dir: fileid3,
        name: &filename3,
        kind: FileKind,
        attr: &sattr3,
        exclusive: bool,
    ) -> Result<InodeAttr, nfsstat3> {
        let name = name_of(name)?;
        let s = set_attrs(attr);
        let default_mode = if kind == FileKind::Dir { 0o755 } else { 0o644 };
        let (a, _) = self
            .fs
            .mknod(
                dir,
                &name,
                kind,
                s.mode.unwrap_or(default_mode),
                s.uid.unwrap_or(0),
                s.gid.unwrap_or(0),
                exclusive,
            )
            .await
            .map_err(|e| nfs_err(&e))?;
        // Size and times of a create (e.g. UNCHECKED with size 0 truncates an existing file).
        let rest = SetAttrs {
            mode: None,
            uid: None,
            gid: None,
            ..s
        };
        if rest != SetAttrs::default() {
            let a = self
                .fs
                .setattr(a.ino, rest)
                .await
                .map_err(|e| nfs_err(&e))?;
            self.seen(&a);
            return Ok(a);
        }
        self.seen(&a);
        Ok(a)
    }

    /// The name a readdir cookie (a file id) stands for in `dir`.
    async fn cookie_name(&self, dir: Ino, cookie: Ino) -> Result<String, nfsstat3> {
        if let Some(n) = self
            .cookie_names
            .lock()
            .expect("cookie lock")
            .get(&(dir, cookie))
        {
            return Ok(n.clone());
        }
        // Not listed by this gateway (or forgotten): find it by scanning.
        let mut after = None;
        loop {
            let (page, more) = self
                .fs
                .readdir(dir, after, READDIR_MAX)
                .await
                .map_err(|e| nfs_err(&e))?;
            if let Some(e) = page.iter().find(|e| e.ino == cookie) {
                return Ok(e.name.clone());
            }
            if !more || page.is_empty() {
                return Err(nfsstat3::NFS3ERR_BAD_COOKIE);
            }
            after = page.last().map(|e| e.name.clone());
        }
    }
}

#[async_trait::async_trait]
impl NFSFileSystem for CairnNfs {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadWrite
    }

    fn root_dir(&self) -> fileid3 {
        ROOT_INO
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let name = name_of(filename)?;
        let a = self
            .fs
            .lookup(dirid, &name)
            .await
            .map_err(|e| nfs_err(&e))?;
        self.seen(&a);
        Ok(a.ino)
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        Ok(fattr(&self.attr(id).await?))
    }

    async fn setattr(&self, id: fileid3, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let a = self
            .fs
            .setattr(id, set_attrs(&setattr))
            .await
            .map_err(|e| nfs_err(&e))?;
        Ok(self.seen(&a))
    }

    async fn read(
        &self,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let a = self.attr(id).await?;
        let data = self
            .fs
            .read(&a, offset, u64::from(count))
            .await
            .map_err(|e| nfs_err(&e))?;
        let eof = offset + data.len() as u64 >= a.size;
        Ok((data.to_vec(), eof))
    }

    async fn write(&self, id: fileid3, offset: u64, data: &[u8]) -> Result<fattr3, nfsstat3> {
        let a = self.attr(id).await?;
        let end = offset + data.len() as u64;
        self.fs
            .write(&a, offset, bytes::Bytes::copy_from_slice(data))
            .await
            .map_err(|e| nfs_err(&e))?;
        // Always through the namespace: it grows the size when the write went past the end,
        // and sets mtime either way.
        let a = self
            .fs
            .extend(id, end.max(a.size))
            .await
            .map_err(|e| nfs_err(&e))?;
        Ok(self.seen(&a))
    }

    async fn create(
        &self,
        dirid: fileid3,
        filename: &filename3,
        attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let a = self
            .make(dirid, filename, FileKind::File, &attr, false)
            .await?;
        Ok((a.ino, fattr(&a)))
    }

    async fn create_exclusive(
        &self,
        dirid: fileid3,
        filename: &filename3,
    ) -> Result<fileid3, nfsstat3> {
        let a = self
            .make(dirid, filename, FileKind::File, &sattr3::default(), true)
            .await?;
        Ok(a.ino)
    }

    async fn mkdir(
        &self,
        dirid: fileid3,
        dirname: &filename3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let a = self
            .make(dirid, dirname, FileKind::Dir, &sattr3::default(), true)
            .await?;
        Ok((a.ino, fattr(&a)))
    }

    async fn remove(&self, dirid: fileid3, filename: &filename3) -> Result<(), nfsstat3> {
        let name = name_of(filename)?;
        // nfsserve sends both REMOVE and RMDIR here.
        match self.fs.unlink(dirid, &name).await {
            Ok(freed) => {
                if let Some(f) = freed {
                    self.purger.push(f);
                }
                Ok(())
            }
            Err(e) if e.fs() == Some(FsError::IsDir) => {
                self.fs.rmdir(dirid, &name).await.map_err(|e| nfs_err(&e))
            }
            Err(e) => Err(nfs_err(&e)),
        }
    }

    async fn rename(
        &self,
        from_dirid: fileid3,
        from_filename: &filename3,
        to_dirid: fileid3,
        to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        let (from, to) = (name_of(from_filename)?, name_of(to_filename)?);
        let freed = self
            .fs
            .rename((from_dirid, &from), (to_dirid, &to), false, false)
            .await
            .map_err(|e| nfs_err(&e))?;
        if let Some(f) = freed {
            self.purger.push(f);
        }
        Ok(())
    }

    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        let after = if start_after == 0 {
            None
        } else {
            Some(self.cookie_name(dirid, start_after).await?)
        };
        let limit = u32::try_from(max_entries.clamp(1, READDIR_MAX as usize)).unwrap_or(1);
        let (page, more) = self
            .fs
            .readdir(dirid, after, limit)
            .await
            .map_err(|e| nfs_err(&e))?;
        {
            let mut names = self.cookie_names.lock().expect("cookie lock");
            if names.len() + page.len() > COOKIE_NAMES_MAX {
                names.clear();
            }
            for e in &page {
                names.insert((dirid, e.ino), e.name.clone());
            }
        }
        let mut entries = Vec::with_capacity(page.len());
        for chunk in page.chunks(ATTR_PARALLEL) {
            let lookups: Vec<_> = chunk
                .iter()
                .map(|e| {
                    let fs = self.fs.clone();
                    let ino = e.ino;
                    tokio::spawn(async move { fs.getattr(ino).await })
                })
                .collect();
            for (e, lookup) in chunk.iter().zip(lookups) {
                let a = lookup
                    .await
                    .map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?
                    .map_err(|e| nfs_err(&e))?;
                entries.push(DirEntry {
                    fileid: e.ino,
                    name: e.name.clone().into_bytes().into(),
                    attr: self.seen(&a),
                });
            }
        }
        Ok(ReadDirResult {
            entries,
            end: !more,
        })
    }

    async fn symlink(
        &self,
        dirid: fileid3,
        linkname: &filename3,
        symlink: &nfspath3,
        attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let name = name_of(linkname)?;
        let target = String::from_utf8(symlink.0.clone()).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        let s = set_attrs(attr);
        let a = self
            .fs
            .symlink(
                dirid,
                &name,
                &target,
                s.uid.unwrap_or(0),
                s.gid.unwrap_or(0),
            )
            .await
            .map_err(|e| nfs_err(&e))?;
        Ok((a.ino, self.seen(&a)))
    }

    async fn readlink(&self, id: fileid3) -> Result<nfspath3, nfsstat3> {
        let t = self.fs.readlink(id).await.map_err(|e| nfs_err(&e))?;
        Ok(t.into_bytes().into())
    }

    /// `(inode, generation)`, little-endian, 16 bytes.
    fn id_to_fh(&self, id: fileid3) -> nfs_fh3 {
        let generation = self
            .generations
            .lock()
            .expect("generations lock")
            .get(&id)
            .copied()
            .unwrap_or(0);
        let mut data = Vec::with_capacity(16);
        data.extend_from_slice(&id.to_le_bytes());
        data.extend_from_slice(&generation.to_le_bytes());
        nfs_fh3 { data }
    }

    fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        let (Some(ino), Some(generation)) = (
            fh.data.get(0..8).and_then(|b| b.try_into().ok()),
            fh.data.get(8..16).and_then(|b| b.try_into().ok()),
        ) else {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        };
        if fh.data.len() != 16 {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let (ino, generation) = (u64::from_le_bytes(ino), u64::from_le_bytes(generation));
        let known = self
            .generations
            .lock()
            .expect("generations lock")
            .get(&ino)
            .copied();
        match known {
            Some(g) if generation != 0 && g != generation => Err(nfsstat3::NFS3ERR_STALE),
            _ => Ok(ino),
        }
    }

    fn serverid(&self) -> [u8; 8] {
        // Cookies stay valid across gateway restarts: they are file ids.
        *b"cairnfs1"
    }
}

/// Serve the namespace of `cluster` over NFSv3 (and MOUNT) on `bind_addr` (`ip:port`; port 0
/// picks one) until `shutdown` turns true. `on_bound` learns the port actually bound. The
/// export runs its own [`Purger`], which also drains the whole purge queue at start and every
/// [`PURGE_EVERY`].
pub async fn serve_nfs(
    cluster: Cluster,
    bind_addr: &str,
    shutdown: watch::Receiver<bool>,
    on_bound: impl FnOnce(u16),
) -> std::io::Result<()> {
    let fs = FsClient::new(cluster.clone());
    let (purger, _worker) = Purger::start(fs, Some(PURGE_EVERY));
    serve_nfs_with(cluster, bind_addr, shutdown, on_bound, purger).await
}

/// [`serve_nfs`] handing removed files to `purger` (a gateway's, which drains the queue).
pub async fn serve_nfs_with(
    cluster: Cluster,
    bind_addr: &str,
    mut shutdown: watch::Receiver<bool>,
    on_bound: impl FnOnce(u16),
    purger: Purger,
) -> std::io::Result<()> {
    let listener =
        NFSTcpListener::bind(bind_addr, CairnNfs::new(FsClient::new(cluster), purger)).await?;
    on_bound(listener.get_listen_port());
    tracing::info!(
        addr = bind_addr,
        port = listener.get_listen_port(),
        "NFSv3 export"
    );
    tokio::select! {
        r = listener.handle_forever() => r,
        _ = async {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    // The sender went away: nobody can ask us to stop, so serve on.
                    std::future::pending::<()>().await;
                }
            }
        } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_types_convert() {
        let t = nfs_time(1_500_000_000_123_456_789);
        assert_eq!((t.seconds, t.nseconds), (1_500_000_000, 123_456_789));
        assert_eq!(set_time(t), SetTime::At(1_500_000_000_123_456_789));
        let t = nfs_time(-1);
        assert_eq!((t.seconds, t.nseconds), (0, 999_999_999));
        let a = InodeAttr {
            ino: 9,
            kind: FileKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            size: 3,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            generation: 4,
            pool: None,
            chunk_size: 0,
        };
        let f = fattr(&a);
        assert_eq!(f.mode, 0o120777);
        assert_eq!(f.fileid, 9);
        assert!(matches!(f.ftype, ftype3::NF3LNK));
    }

    #[test]
    fn every_fs_error_has_its_nfs_status() {
        let cases = [
            (FsError::NotFound, nfsstat3::NFS3ERR_NOENT),
            (FsError::Exists, nfsstat3::NFS3ERR_EXIST),
            (FsError::NotEmpty, nfsstat3::NFS3ERR_NOTEMPTY),
            (FsError::NameTooLong, nfsstat3::NFS3ERR_NAMETOOLONG),
            (FsError::Stale, nfsstat3::NFS3ERR_STALE),
            (FsError::IsDir, nfsstat3::NFS3ERR_ISDIR),
            (FsError::NotDir, nfsstat3::NFS3ERR_NOTDIR),
        ];
        for (e, want) in cases {
            assert_eq!(fs_status(e) as u32, want as u32, "{e}");
        }
    }
}
