//! The write pass: one walk over the inodes in number order, allocating and writing
//! each one's blocks, then the inode tables, bitmaps, descriptors and superblocks.
//! With a streamed plan ([`Plan::pending`]) the walk waits for each non-directory
//! as the loader hands it over, and checks and counts it then.
//!
//! File data held in a host file is read ahead by two threads (files dealt in turn)
//! in 1 MiB chunks, packed into reused 1 MiB batches, and taken in the order the
//! files are written, so reading overlaps writing; content already in memory is
//! taken as it is. All-zero blocks become holes; consecutive blocks are coalesced
//! into large positioned writes done by [`WRITERS`] threads, with write-behind when
//! asked for ([`Sink`]). Every block is written once, so the order in which
//! those threads finish does not matter. Inode table blocks are written as soon as a
//! group's inodes are done, so memory stays bounded by one group's table and one
//! directory (besides the tree itself).
//!
//! Why the plan's margin is enough: a hole found in a file only ever replaces a data
//! block with at most one more extent, and one more extent adds at most one tree
//! block below 1361 extents and two or three above; reserved ranges split at most
//! one extent each.

use super::extent::{self, ExtentList};
use super::group::{self, GroupDesc};
use super::inode::{self, Inode};
use super::plan::{self, CHUNK_BLOCKS, Entry, Geometry, Needs, Plan, Source};
use super::superblock::{SUPERBLOCK_OFFSET, SuperblockFields};
use super::{BLOCK_SIZE, BLOCK_SIZE_USIZE, BLOCKS_PER_GROUP, Ext4Error, Ext4Options, Ext4Summary};
use super::{FIRST_INO, INODE_SIZE, JOURNAL_INO, ROOT_INO};
use super::{checksum, dir, journal, xattr};
use crate::FileRegion;
use crate::tree::{Content, NodeKind};
use rustix::fs::Advice;
use std::io;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

/// Threads reading file content ahead (files are dealt to them in turn).
const READERS: usize = 2;

// The buffers below are sized small on purpose. Every byte of content passes
// through them twice in quick succession (copied in, then copied into the page
// cache by the write), so a working set that stays in the CPU's caches matters
// more than long queues. Measured on the Debian root of `bench/run.sh ext4` (2
// cores; medians of 7 runs): 2 batches of read-ahead per reader, 1 MiB writes and
// 2 writer threads took 0.16-0.19 s and 0.22-0.29 s of CPU, against 0.19-0.24 s
// and 0.29-0.38 s with 8 batches, 4 MiB writes and 3 writers; a 1 GiB file went
// from 0.53-0.89 s to 0.46-0.48 s; 50 000 small files were unchanged.

/// Batches each reader thread may have in flight.
const READ_AHEAD: usize = 2;

/// Threads writing the coalesced buffers: two keep the device busy (a write that
/// starts write-back waits for the block allocation it triggers); a third only
/// contends for the image file's lock.
const WRITERS: usize = 2;

/// Coalesced buffers queued for the writer threads.
const WRITES_IN_FLIGHT: usize = 4;

/// Largest coalesced write.
const WRITE_BUFFER: usize = 1 << 20;

/// A write buffer: up to [`WRITE_BUFFER`] bytes, whole blocks, in a `Vec` whose
/// capacity is kept from use to use.
type IoBuf = Vec<u8>;

fn new_io_buf() -> IoBuf {
    Vec::with_capacity(WRITE_BUFFER)
}

/// Appends `data` (at most the room left) to `buf`, with zeros up to the next block
/// boundary.
fn push_block_padded(buf: &mut IoBuf, data: &[u8]) {
    let padded = buf.len() + data.len().next_multiple_of(BLOCK_SIZE_USIZE);
    buf.extend_from_slice(data);
    buf.resize(padded, 0);
}

/// Coalesces writes of consecutive blocks and hands full buffers to the writer
/// threads, so checking and copying overlap with the kernel's write.
struct BlockWriter {
    start: u64,
    buf: IoBuf,
    to_disk: SyncSender<(u64, IoBuf)>,
    spare: Receiver<IoBuf>,
}

impl BlockWriter {
    /// Queues `data` for the blocks from `block` on; a partial last block is padded
    /// with zeros.
    fn write(&mut self, block: u64, data: &[u8]) -> Result<(), Ext4Error> {
        let mut block = block;
        let mut data = data;
        while !data.is_empty() {
            let pending_blocks = (self.buf.len() / BLOCK_SIZE_USIZE) as u64;
            if !self.buf.is_empty()
                && (self.start + pending_blocks != block || self.buf.len() == WRITE_BUFFER)
            {
                self.flush()?;
            }
            if self.buf.is_empty() {
                self.start = block;
            }
            // Whole blocks, the room being a multiple of the block size.
            let take = data.len().min(WRITE_BUFFER - self.buf.len());
            push_block_padded(&mut self.buf, &data[..take]);
            block += take.div_ceil(BLOCK_SIZE_USIZE) as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// Like `write`, but all-zero blocks are skipped (they read as zeros already).
    fn write_sparse(&mut self, block: u64, data: &[u8]) -> Result<(), Ext4Error> {
        for (i, chunk) in data.chunks(BLOCK_SIZE_USIZE).enumerate() {
            if !plan::is_zero(chunk) {
                self.write(block + i as u64, chunk)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Ext4Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| new_io_buf());
        let full = std::mem::replace(&mut self.buf, next);
        // The writer threads only hang up after a failed write, which they report.
        self.to_disk.send((self.start, full)).map_err(|_| Ext4Error::Write {
            block: self.start,
            source: io::Error::other("the writer thread stopped"),
        })
    }
}

/// Where the writer threads put the blocks: positioned writes through the region.
/// With [`Ext4Options::write_behind`], each write is followed by
/// `posix_fadvise(POSIX_FADV_DONTNEED)` on its range, which makes the kernel start
/// writing those pages to the device at once (and drop them from the page cache
/// once written) instead of leaving them all for the final `fsync`: the device works
/// while the tree is still being read and written. Measured on a Debian root (262
/// MiB written), that was about a quarter faster than either plain writes (the whole
/// image flushed at the end) or `O_DIRECT` writes (which pin every page of the
/// buffer and reach the device as many small segments).
pub(crate) struct Sink<'a> {
    region: FileRegion<'a>,
    write_behind: bool,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(region: FileRegion<'a>, write_behind: bool) -> Sink<'a> {
        Sink { region, write_behind }
    }

    fn write(&self, block: u64, data: &[u8]) -> io::Result<()> {
        let offset = block.checked_mul(BLOCK_SIZE).ok_or_else(|| io::Error::other("overflow"))?;
        // Also reports a write outside the region.
        self.region.write_all_at(data, offset)?;
        if self.write_behind {
            // Only advice: where it is not supported the final fsync writes everything.
            let _ = rustix::fs::fadvise(
                self.region.file(),
                self.region.offset() + offset,
                NonZeroU64::new(data.len() as u64),
                Advice::DontNeed,
            );
        }
        Ok(())
    }
}

/// A writer thread: positioned writes of coalesced buffers, taken from the queue
/// shared by all writer threads. The first failure stops every writer (`failed`);
/// once they are all gone the queue is dropped, so the main thread's next send fails
/// instead of waiting forever, and the failure is reported by the thread's join.
fn write_to_disk(
    sink: &Sink<'_>,
    queue: &Mutex<Receiver<(u64, IoBuf)>>,
    spare: SyncSender<IoBuf>,
    failed: &AtomicBool,
) -> Result<(), Ext4Error> {
    loop {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Receiving cannot panic, so the lock is never poisoned in practice.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((block, mut data)) = next else { return Ok(()) };
        if let Err(source) = sink.write(block, &data) {
            failed.store(true, Ordering::Relaxed);
            return Err(Ext4Error::Write { block, source });
        }
        data.clear();
        let _ = spare.try_send(data);
    }
}

/// Fills inode tables group by group, in increasing inode order.
struct InodeTables {
    group: u32,
    buf: Vec<u8>,
}

struct Writer<'p> {
    plan: &'p Plan<'p>,
    geometry: Geometry,
    opts: &'p Ext4Options,
    out: BlockWriter,
    tables: InodeTables,
    fs_seed: u32,
    /// The reader threads; file k (counting the files whose content is a
    /// [`Content::Source`], in inode order) comes from reader k % READERS.
    readers: Vec<ReaderLink>,
    /// Files taken from the readers so far.
    files_done: usize,
    /// What the pending nodes of a streamed plan turned out to need.
    streamed: Needs,
}

/// The writer's end of one reader thread.
struct ReaderLink {
    /// Batches, in the order of that reader's files.
    batches: Receiver<Batch>,
    /// The bytes of the batch being used (empty before the first).
    bytes: Vec<u8>,
    /// Its pieces not used yet.
    pieces: std::vec::IntoIter<Piece>,
    /// Byte buffers handed back to the reader for reuse.
    spare: SyncSender<Vec<u8>>,
}

/// Content read ahead, sent to the writer in one go: the pieces' bytes one after
/// another in one buffer, so that small files cost neither an allocation nor a
/// thread wake-up each, and buffers go back and forth instead of being allocated
/// (and zeroed, and faulted in) for every file.
struct Batch {
    /// [`BATCH_BYTES`] long (initialised once, then reused), or empty when the
    /// batch carries no data.
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

/// A piece of file content from the reader thread.
enum Piece {
    /// Blocks of the current file from logical block `block`: these bytes of the batch.
    Data {
        block: u64,
        bytes: std::ops::Range<usize>,
    },
    /// The current file is complete.
    End,
    Failed(Ext4Error),
}

/// Bytes of one batch: the largest chunk read at once.
const BATCH_BYTES: usize = 1 << 20;
const _: () = assert!(BATCH_BYTES as u64 == CHUNK_BLOCKS * BLOCK_SIZE);

/// Most pieces in one batch.
const BATCH_PIECES: usize = 1024;

/// Fills batches for the writer; `None` once the writer has hung up.
struct Batcher<'a> {
    out: &'a SyncSender<Batch>,
    spare: &'a Receiver<Vec<u8>>,
    bytes: Vec<u8>,
    used: usize,
    pieces: Vec<Piece>,
}

impl<'a> Batcher<'a> {
    fn new(out: &'a SyncSender<Batch>, spare: &'a Receiver<Vec<u8>>) -> Batcher<'a> {
        Batcher { out, spare, bytes: Vec::new(), used: 0, pieces: Vec::new() }
    }

    /// Room for `len` bytes (at most [`BATCH_BYTES`]) in the current batch, starting
    /// a new one when they do not fit.
    fn room(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.used + len > self.bytes.len() {
            self.flush()?;
            // The writer hands back only whole buffers, never empty ones.
            self.bytes = self.spare.try_recv().unwrap_or_else(|_| vec![0; BATCH_BYTES]);
        }
        Some(&mut self.bytes[self.used..self.used + len])
    }

    /// Adds the `len` bytes just read into [`Batcher::room`] as blocks from `block`.
    fn push_data(&mut self, block: u64, len: usize) -> Option<()> {
        let bytes = self.used..self.used + len;
        self.used += len;
        self.push(Piece::Data { block, bytes })
    }

    fn push(&mut self, piece: Piece) -> Option<()> {
        let urgent = matches!(piece, Piece::Failed(_));
        self.pieces.push(piece);
        if urgent || self.pieces.len() >= BATCH_PIECES {
            self.flush()?;
        }
        Some(())
    }

    fn flush(&mut self) -> Option<()> {
        if self.pieces.is_empty() {
            return Some(());
        }
        let batch = Batch {
            bytes: std::mem::take(&mut self.bytes),
            pieces: std::mem::take(&mut self.pieces),
        };
        self.used = 0;
        self.out.send(batch).ok()
    }
}

/// Reads the data ranges of every READERS-th file whose content is a
/// [`Content::Source`] (starting at file `which`), in inode order, a chunk at a time,
/// so reading overlaps with checking and writing. Stops when the writer hangs up.
fn read_ahead(plan: &Plan<'_>, which: usize, out: &SyncSender<Batch>, spare: &Receiver<Vec<u8>>) {
    let mut batcher = Batcher::new(out, spare);
    let mut files = 0usize;
    for entry in &plan.entries {
        let Source::Node(id) = entry.source else { continue };
        // A node still being read is waited for; if its loader stopped, so does the
        // writer when it gets there. What is read so far goes to the writer first:
        // it may need it to get this far.
        if plan.must_wait(id) && batcher.flush().is_none() {
            return;
        }
        let Ok(node) = plan.node(entry, id) else { break };
        let NodeKind::File(content @ Content::Source(_)) = &node.kind else { continue };
        files += 1;
        if (files - 1) % READERS == which && read_file(entry, content, &mut batcher).is_none() {
            return;
        }
    }
    let _ = batcher.flush();
}

/// `None` when the writer is gone or the file failed (the failure was sent).
fn read_file(entry: &Entry, content: &Content, out: &mut Batcher<'_>) -> Option<()> {
    let runs = match plan::data_block_runs(content, entry) {
        Ok(runs) => runs,
        Err(error) => {
            out.push(Piece::Failed(error));
            return None;
        }
    };
    for run in runs {
        let mut block = run.start;
        while block < run.end {
            let n = (run.end - block).min(CHUNK_BLOCKS);
            // n ≤ CHUNK_BLOCKS, so the byte count is at most BATCH_BYTES.
            let len = BLOCK_SIZE_USIZE * usize::try_from(n).unwrap_or(0);
            let room = out.room(len)?;
            if let Err(source) = content.read_exact_at(room, block * BLOCK_SIZE) {
                let path = entry.path_string();
                let error = Ext4Error::Content { path, source_name: content.describe(), source };
                out.push(Piece::Failed(error));
                return None;
            }
            out.push_data(block, len)?;
            block += n;
        }
    }
    out.push(Piece::End)
}

/// Writes the file system; also returns what the pending nodes of a streamed plan
/// needed (nothing for a whole tree).
pub(crate) fn write(
    plan: &Plan<'_>,
    geometry: Geometry,
    opts: &Ext4Options,
    region: FileRegion<'_>,
) -> Result<(Ext4Summary, Needs), Ext4Error> {
    let (disk_tx, disk_rx) = sync_channel(WRITES_IN_FLIGHT);
    let (buffer_tx, buffer_rx) = sync_channel(WRITES_IN_FLIGHT + WRITERS + 1);
    let sink = Sink::new(region, opts.write_behind);
    let failed = AtomicBool::new(false);
    let (sink, failed) = (&sink, &failed);
    // Held by the writer threads only: it goes away when the last of them ends.
    let queue = Arc::new(Mutex::new(disk_rx));
    std::thread::scope(|scope| {
        let mut readers = Vec::with_capacity(READERS);
        for which in 0..READERS {
            let (batch_tx, batch_rx) = sync_channel(READ_AHEAD);
            let (spare_tx, spare_rx) = sync_channel(READ_AHEAD + 2);
            scope.spawn(move || read_ahead(plan, which, &batch_tx, &spare_rx));
            readers.push(ReaderLink {
                batches: batch_rx,
                bytes: Vec::new(),
                pieces: Vec::new().into_iter(),
                spare: spare_tx,
            });
        }
        let disks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (queue, spare) = (Arc::clone(&queue), buffer_tx.clone());
                scope.spawn(move || write_to_disk(sink, &queue, spare, failed))
            })
            .collect();
        drop((queue, buffer_tx));
        let result = (|| {
            let mut writer = Writer {
                plan,
                geometry,
                opts,
                out: BlockWriter {
                    start: 0,
                    buf: new_io_buf(),
                    to_disk: disk_tx,
                    spare: buffer_rx,
                },
                tables: InodeTables { group: 0, buf: Vec::new() },
                fs_seed: checksum::fs_seed(&opts.uuid.to_rfc_bytes()),
                readers,
                files_done: 0,
                streamed: Needs::default(),
            };
            for entry in &plan.entries {
                let inode = writer.inode(entry)?;
                let bytes = inode.encode(entry.ino, writer.fs_seed);
                writer.put_inode(entry.ino, &bytes)?;
            }
            writer.flush_inode_table()?;
            // Consuming the writer hangs up on the reader and writer threads (also on
            // an early error).
            let streamed = writer.streamed;
            Ok((writer.finish()?, streamed))
        })();
        let mut written = Ok(());
        for disk in disks {
            let result = disk.join().unwrap_or_else(|_| {
                Err(Ext4Error::Write {
                    block: 0,
                    source: io::Error::other("a writer thread panicked"),
                })
            });
            written = written.and(result);
        }
        // A failed write is the root cause of whatever the main loop reported.
        written.and(result)
    })
}

impl Writer<'_> {
    fn alloc(&mut self, max: u64, entry: &Entry) -> Result<std::ops::Range<u64>, Ext4Error> {
        self.geometry
            .allocator
            .alloc(max)
            .ok_or_else(|| Ext4Error::OutOfSpace { path: entry.path_string() })
    }

    /// Allocates and writes `blocks` (whole blocks, logical from 0) as the body of a
    /// directory or slow symlink.
    fn write_body(&mut self, entry: &Entry, blocks: &[Vec<u8>]) -> Result<ExtentList, Ext4Error> {
        let mut list = ExtentList::default();
        let mut done = 0usize;
        while done < blocks.len() {
            let run = self.alloc((blocks.len() - done) as u64, entry)?;
            for (i, block) in (run.start..run.end).enumerate() {
                self.out.write(block, &blocks[done + i])?;
            }
            list.push(done as u64, run.start, run.end - run.start);
            done += usize::try_from(run.end - run.start).unwrap_or(usize::MAX);
        }
        Ok(list)
    }

    /// Allocates the extent tree blocks of `list`, writes them, and fills the inode.
    fn finish_extents(
        &mut self,
        entry: &Entry,
        list: &ExtentList,
        inode: &mut Inode,
    ) -> Result<(), Ext4Error> {
        let count = extent::tree_blocks(list.extents.len() as u64);
        let mut numbers = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for _ in 0..count {
            numbers.push(self.alloc(1, entry)?.start);
        }
        let (root, tree_blocks) = extent::build(&list.extents, &numbers, entry.ino, self.fs_seed);
        for (number, block) in &tree_blocks {
            self.out.write(*number, block)?;
        }
        inode.i_block = root;
        inode.flags |= inode::EXTENTS_FL;
        inode.fs_blocks += list.blocks + count;
        Ok(())
    }

    fn inode(&mut self, entry: &Entry) -> Result<Inode, Ext4Error> {
        match entry.source {
            Source::LostFound => {
                let mut inode = Inode::new(inode::S_IFDIR | 0o700, 0, 0, self.opts.timestamp);
                let blocks = dir::encode(entry.ino, ROOT_INO, &[], 4, self.fs_seed);
                inode.size = blocks.len() as u64 * BLOCK_SIZE;
                inode.links = 2;
                let list = self.write_body(entry, &blocks)?;
                self.finish_extents(entry, &list, &mut inode)?;
                Ok(inode)
            }
            Source::Journal => {
                let mut inode = Inode::new(inode::S_IFREG | 0o600, 0, 0, self.opts.timestamp);
                let Some((list, tree)) = self.geometry.journal.clone() else {
                    return Err(Ext4Error::OutOfSpace { path: entry.path_string() });
                };
                let first = list.extents.first().map_or(0, |e| e.physical);
                self.out.write(
                    first,
                    &journal::superblock(super::le::lo32(list.blocks), self.opts.uuid),
                )?;
                let (root, tree_blocks) =
                    extent::build(&list.extents, &tree, JOURNAL_INO, self.fs_seed);
                for (number, block) in &tree_blocks {
                    self.out.write(*number, block)?;
                }
                inode.i_block = root;
                inode.flags = inode::EXTENTS_FL;
                inode.size = list.blocks * BLOCK_SIZE;
                inode.fs_blocks = list.blocks + tree.len() as u64;
                Ok(inode)
            }
            Source::Node(id) => self.node_inode(entry, id),
        }
    }

    fn node_inode(&mut self, entry: &Entry, id: crate::tree::NodeId) -> Result<Inode, Ext4Error> {
        let plan = self.plan;
        let node = plan.node(entry, id)?;
        if plan.pending.is_some() && !entry.is_dir {
            // Checked and counted now rather than by the plan (see Plan::pending).
            let needs = plan::Needs::of(node, entry, plan::Mode::Bound)?;
            self.streamed.blocks += needs.blocks;
            self.streamed.slack += needs.slack;
        }
        let meta = &node.meta;
        let (type_bits, _) = type_codes(&node.kind);
        let mut inode =
            Inode::new(type_bits | (meta.permissions & 0o7777), meta.uid, meta.gid, meta.mtime);
        // Directories with more than 65000 subdirectories count 1 (dir_nlink).
        inode.links = u16::try_from(entry.links).ok().filter(|&l| l <= 65000).unwrap_or(1);

        // Validated by the plan (or just above); the errors cannot happen here.
        let too_large = |_| Ext4Error::XattrsTooLarge { path: entry.path_string() };
        let attrs = xattr::prepare(&meta.xattrs).map_err(too_large)?;
        let (in_inode, in_block) = xattr::place(attrs).map_err(too_large)?;
        inode.xattr_area = xattr::encode_in_inode(&in_inode);
        if !in_block.is_empty() {
            let block = self.alloc(1, entry)?.start;
            let bytes = xattr::encode_block(&in_block, block, self.fs_seed);
            self.out.write(block, &bytes)?;
            inode.xattr_block = block;
            inode.fs_blocks += 1;
        }

        match &node.kind {
            NodeKind::Directory(children) => {
                let mut entries: Vec<dir::DirEntry<'_>> = Vec::with_capacity(children.len() + 1);
                if entry.ino == ROOT_INO && plan.made_lost_found {
                    entries.push(dir::DirEntry {
                        name: b"lost+found",
                        ino: FIRST_INO,
                        file_type: dir::FT_DIR,
                    });
                }
                for (name, child) in children {
                    // From the skeleton when the child is still being read: the
                    // loader checks that its kind is the one listed.
                    let (_, file_type) = type_codes(&plan.tree.node(*child).kind);
                    entries.push(dir::DirEntry {
                        name,
                        ino: plan.node_ino[child.index()],
                        file_type,
                    });
                }
                let min_blocks = if entry.ino == FIRST_INO { 4 } else { 1 };
                let blocks =
                    dir::encode(entry.ino, entry.parent, &entries, min_blocks, self.fs_seed);
                inode.size = blocks.len() as u64 * BLOCK_SIZE;
                let list = self.write_body(entry, &blocks)?;
                self.finish_extents(entry, &list, &mut inode)?;
            }
            NodeKind::File(content) => {
                inode.size = content.len();
                let list = match content {
                    Content::Bytes(bytes) => {
                        let mut list = ExtentList::default();
                        self.put_data(entry, &mut list, 0, bytes)?;
                        list
                    }
                    Content::Source(_) => self.write_file(entry)?,
                };
                self.finish_extents(entry, &list, &mut inode)?;
            }
            NodeKind::Symlink(target) => {
                inode.size = target.len() as u64;
                if target.len() < 60 {
                    inode.i_block[..target.len()].copy_from_slice(target);
                } else {
                    let mut block = vec![0u8; BLOCK_SIZE_USIZE];
                    block[..target.len()].copy_from_slice(target);
                    let list = self.write_body(entry, &[block])?;
                    self.finish_extents(entry, &list, &mut inode)?;
                }
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                inode.i_block = inode::device_i_block(*major, *minor);
            }
            NodeKind::Fifo | NodeKind::Socket => {}
        }
        Ok(inode)
    }

    /// Takes a file's content from the reader thread, skipping all-zero blocks.
    fn write_file(&mut self, entry: &Entry) -> Result<ExtentList, Ext4Error> {
        let mut list = ExtentList::default();
        let r = self.files_done % READERS;
        self.files_done += 1;
        loop {
            let reader = &mut self.readers[r];
            let Some(piece) = reader.pieces.next() else {
                let Ok(batch) = reader.batches.recv() else {
                    return Err(Ext4Error::ReaderStopped { path: entry.path_string() });
                };
                let used = std::mem::replace(&mut reader.bytes, batch.bytes);
                if !used.is_empty() {
                    // A full spare queue just means the buffer is freed.
                    let _ = reader.spare.try_send(used);
                }
                reader.pieces = batch.pieces.into_iter();
                continue;
            };
            match piece {
                Piece::Data { block, bytes } => {
                    // Taken out while `put_data` borrows the writer, then put back.
                    let batch = std::mem::take(&mut reader.bytes);
                    let result = self.put_data(entry, &mut list, block, &batch[bytes]);
                    self.readers[r].bytes = batch;
                    result?;
                }
                Piece::End => return Ok(list),
                Piece::Failed(error) => return Err(error),
            }
        }
    }

    /// Allocates and queues the blocks of `data` (file content from logical block
    /// `block`; a partial last block reads as zero-padded) that are not all zeros,
    /// recording them in `list`.
    fn put_data(
        &mut self,
        entry: &Entry,
        list: &mut ExtentList,
        block: u64,
        data: &[u8],
    ) -> Result<(), Ext4Error> {
        // Block k of `data` (the last one may be partial).
        let count = data.len().div_ceil(BLOCK_SIZE_USIZE);
        let zero = |k: usize| {
            let start = k * BLOCK_SIZE_USIZE;
            plan::is_zero(&data[start..(start + BLOCK_SIZE_USIZE).min(data.len())])
        };
        let mut i = 0;
        while i < count {
            if zero(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < count && !zero(j) {
                j += 1;
            }
            // Blocks i..j hold data: allocate (maybe in pieces) and write.
            while i < j {
                let run = self.alloc((j - i) as u64, entry)?;
                let len = usize::try_from(run.end - run.start).unwrap_or(0);
                list.push(block + i as u64, run.start, run.end - run.start);
                let start = i * BLOCK_SIZE_USIZE;
                let end = ((i + len) * BLOCK_SIZE_USIZE).min(data.len());
                self.out.write(run.start, &data[start..end])?;
                i += len;
            }
        }
        Ok(())
    }

    fn put_inode(&mut self, ino: u32, bytes: &[u8; INODE_SIZE]) -> Result<(), Ext4Error> {
        let ipg = self.geometry.inodes_per_group;
        let group = (ino - 1) / ipg;
        if group != self.tables.group {
            self.flush_inode_table()?;
            self.tables.group = group;
        }
        let index = usize::try_from((ino - 1) % ipg).unwrap_or(0);
        let end = (index + 1) * INODE_SIZE;
        if self.tables.buf.len() < end {
            self.tables.buf.resize(end.div_ceil(BLOCK_SIZE_USIZE) * BLOCK_SIZE_USIZE, 0);
        }
        self.tables.buf[index * INODE_SIZE..end].copy_from_slice(bytes);
        Ok(())
    }

    fn flush_inode_table(&mut self) -> Result<(), Ext4Error> {
        let start = self.geometry.inode_tables[usize::try_from(self.tables.group).unwrap_or(0)];
        let buf = std::mem::take(&mut self.tables.buf);
        self.out.write_sparse(start, &buf)?;
        Ok(())
    }

    fn finish(mut self) -> Result<Ext4Summary, Ext4Error> {
        let geometry = &self.geometry;
        let used = geometry.allocator.used_ranges();
        let per_group = u64::from(BLOCKS_PER_GROUP);
        let ipg = geometry.inodes_per_group;
        let mut dirs_per_group = vec![0u32; usize::try_from(geometry.groups).unwrap_or(0)];
        for entry in self.plan.entries.iter().filter(|e| e.is_dir) {
            dirs_per_group[usize::try_from((entry.ino - 1) / ipg).unwrap_or(0)] += 1;
        }
        let last_group = geometry.groups - 1;
        let table_blocks = u64::from(ipg) / (BLOCK_SIZE / INODE_SIZE as u64);
        let mut descs = Vec::with_capacity(dirs_per_group.len() * super::DESC_SIZE);
        let mut cursor = 0;
        let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
        // Block bitmaps first, then inode bitmaps: each kind is laid out contiguously,
        // so the writes coalesce; only the descriptors are kept (64 bytes a group).
        let mut groups = Vec::with_capacity(dirs_per_group.len());
        for g in 0..geometry.groups {
            let gi = usize::try_from(g).unwrap_or(0);
            let first = u64::from(g) * per_group;
            let end = geometry.blocks.min(first + per_group);
            let in_group = end - first;
            let used_blocks = group::used_in(first, end, &used, &mut cursor);
            // What the kernel's and e2fsck's BLOCK_UNINIT bitmap holds: the group's
            // superblock and descriptor copies, and its own metadata inside it.
            let overlap = |range: std::ops::Range<u64>| {
                range.end.min(end).saturating_sub(range.start.max(first))
            };
            let base = if plan::has_backup(g, geometry.backup_bgs) {
                (1 + geometry.gdt_blocks).min(in_group)
            } else {
                0
            };
            let (bb, ib, it) =
                (geometry.block_bitmaps[gi], geometry.inode_bitmaps[gi], geometry.inode_tables[gi]);
            let uninit_used =
                base + overlap(bb..bb + 1) + overlap(ib..ib + 1) + overlap(it..it + table_blocks);
            // e2fsck wants the last group initialised (its bitmap has padding bits).
            let block_uninit = g != last_group && used_blocks == uninit_used;
            let used_inodes = self.plan.last_ino.saturating_sub(g * ipg).min(ipg);
            let mut desc = GroupDesc {
                block_bitmap: bb,
                inode_bitmap: ib,
                inode_table: it,
                free_blocks: u32::try_from(in_group - used_blocks).unwrap_or(0),
                free_inodes: ipg - used_inodes,
                used_dirs: dirs_per_group[gi],
                flags: group::BG_ITABLE_ZEROED,
                itable_unused: ipg - used_inodes,
                block_bitmap_csum: 0,
                inode_bitmap_csum: 0,
            };
            if block_uninit {
                desc.flags |= group::BG_BLOCK_UNINIT;
            } else {
                let (bitmap, _) = group::block_bitmap(g, in_group, &used, &mut cursor);
                desc.block_bitmap_csum = group::block_bitmap_csum(&bitmap, self.fs_seed);
                self.out.write(bb, &bitmap)?;
            }
            if used_inodes == 0 {
                desc.flags |= group::BG_INODE_UNINIT;
            }
            free_blocks += in_group - used_blocks;
            free_inodes += u64::from(ipg - used_inodes);
            groups.push(desc);
        }
        for (g, desc) in (0..).zip(groups.iter_mut()) {
            let used_inodes = ipg - desc.free_inodes;
            if used_inodes > 0 {
                let bitmap = group::inode_bitmap(used_inodes, ipg);
                desc.inode_bitmap_csum = group::inode_bitmap_csum(&bitmap, ipg, self.fs_seed);
                self.out.write(desc.inode_bitmap, &bitmap)?;
            }
            descs.extend_from_slice(&desc.encode(g, self.fs_seed));
        }
        descs.resize(usize::try_from(geometry.gdt_blocks).unwrap_or(0) * BLOCK_SIZE_USIZE, 0);
        let inodes_count = u64::from(ipg) * u64::from(geometry.groups);
        let journal_backup = geometry.journal.as_ref().map(|(list, tree)| {
            let (root, _) = extent::build(&list.extents, tree, JOURNAL_INO, self.fs_seed);
            let mut words = [0u32; 17];
            for (i, word) in words.iter_mut().take(15).enumerate() {
                *word = super::le::get_u32(&root, 4 * i);
            }
            words[15] = super::le::hi32(list.blocks * BLOCK_SIZE);
            words[16] = super::le::lo32(list.blocks * BLOCK_SIZE);
            words
        });
        let mut label = [0u8; 16];
        label[..self.opts.label.len()].copy_from_slice(self.opts.label.as_bytes());
        let fields = SuperblockFields {
            inodes_count: u32::try_from(inodes_count).unwrap_or(u32::MAX),
            blocks_count: geometry.blocks,
            free_blocks,
            free_inodes: u32::try_from(free_inodes).unwrap_or(0),
            inodes_per_group: ipg,
            uuid: self.opts.uuid,
            hash_seed: self.opts.hash_seed,
            label,
            time: self.opts.timestamp.seconds,
            log_groups_per_flex: log_groups_per_flex(geometry.groups),
            backup_bgs: geometry.backup_bgs,
            journal_backup,
        };
        for &g in &geometry.backup_groups.clone() {
            let first = u64::from(g) * per_group;
            let sb = fields.encode(u16::try_from(g).unwrap_or(u16::MAX));
            let mut block0 = vec![0u8; BLOCK_SIZE_USIZE];
            // The primary sits at byte 1024 of block 0; copies at byte 0 of their group.
            let at = if g == 0 { usize::try_from(SUPERBLOCK_OFFSET).unwrap_or(1024) } else { 0 };
            block0[at..at + sb.len()].copy_from_slice(&sb);
            self.out.write(first, &block0)?;
            self.out.write(first + 1, &descs)?;
        }
        self.out.flush()?;
        let geometry = &self.geometry;
        Ok(Ext4Summary {
            block_size: BLOCK_SIZE,
            block_count: geometry.blocks,
            free_blocks,
            used_bytes: (geometry.blocks - free_blocks) * BLOCK_SIZE,
            inode_count: inodes_count,
            used_inodes: inodes_count - free_inodes,
            journal_blocks: geometry.journal.as_ref().map_or(0, |(list, _)| list.blocks),
        })
    }
}

/// s_log_groups_per_flex: all groups' metadata is packed at the start, so one flex
/// group spans them all (at least 16 groups, as mke2fs uses).
fn log_groups_per_flex(groups: u32) -> u8 {
    let bits = u32::BITS - groups.saturating_sub(1).leading_zeros();
    u8::try_from(bits.max(4)).unwrap_or(31)
}

/// The inode mode's type bits and the directory entry's file type of a node.
fn type_codes(kind: &NodeKind) -> (u16, u8) {
    match kind {
        NodeKind::Directory(_) => (inode::S_IFDIR, dir::FT_DIR),
        NodeKind::File(_) => (inode::S_IFREG, dir::FT_REG),
        NodeKind::Symlink(_) => (inode::S_IFLNK, dir::FT_SYMLINK),
        NodeKind::CharDevice { .. } => (inode::S_IFCHR, dir::FT_CHR),
        NodeKind::BlockDevice { .. } => (inode::S_IFBLK, dir::FT_BLK),
        NodeKind::Fifo => (inode::S_IFIFO, dir::FT_FIFO),
        NodeKind::Socket => (inode::S_IFSOCK, dir::FT_SOCK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4;
    use crate::tree::{ContentSource, FileTree, Metadata, Node, Timestamp};
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    /// 9 MiB of content (more than two write buffers) with an all-zero stretch in
    /// the middle, so the writes are split around a hole.
    #[derive(Debug)]
    struct Pattern;

    impl ContentSource for Pattern {
        fn len(&self) -> u64 {
            (9 << 20) + 100
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let n = buf.len().min(usize::try_from(self.len() - offset.min(self.len())).unwrap());
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                let at = offset + i as u64;
                let in_hole = (3 << 20..5 << 20).contains(&at);
                *byte = if in_hole { 0 } else { (at % 251) as u8 | 1 };
            }
            Ok(n)
        }

        fn describe(&self) -> String {
            "pattern".into()
        }
    }

    fn tree() -> FileTree {
        let meta = |mode| Metadata::new(mode, 0, 0, Timestamp::from_seconds(1_700_000_000));
        let mut tree = FileTree::new(meta(0o755));
        let root = tree.root();
        let dir = Node { meta: meta(0o755), kind: NodeKind::Directory(BTreeMap::new()) };
        let etc = tree.add(root, b"etc", dir).unwrap();
        for i in 0..50 {
            let bytes: Arc<[u8]> = Arc::from(format!("file {i}\n").repeat(i * 40).as_bytes());
            let node = Node { meta: meta(0o644), kind: NodeKind::File(Content::Bytes(bytes)) };
            tree.add(etc, format!("f{i}").as_bytes(), node).unwrap();
        }
        let big =
            Node { meta: meta(0o600), kind: NodeKind::File(Content::Source(Arc::new(Pattern))) };
        tree.add(root, b"big", big).unwrap();
        tree
    }

    /// The image bytes of `tree` written into a region of 32 MiB starting `offset`
    /// bytes into a sparse file.
    fn image(dir: &tempfile::TempDir, name: &str, write_behind: bool, offset: u64) -> Vec<u8> {
        let path = dir.path().join(name);
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let len = 32 << 20;
        file.set_len(offset + len).unwrap();
        let opts = Ext4Options { write_behind, ..Ext4Options::default() };
        ext4::write(&tree(), &opts, FileRegion::new(&file, offset, len)).unwrap();
        let mut bytes = vec![0u8; usize::try_from(len).unwrap()];
        file.read_exact_at(&mut bytes, offset).unwrap();
        bytes
    }

    #[test]
    fn write_behind_gives_the_same_bytes_wherever_the_region_starts() {
        let dir = tempfile::tempdir().unwrap();
        let cached = image(&dir, "cached", false, 0);
        assert!(cached == image(&dir, "behind", true, 0));
        assert!(cached == image(&dir, "unaligned", true, 512));
    }

    #[test]
    fn a_failed_write_is_reported_not_waited_on() {
        // A read-only descriptor: every positioned write fails (EBADF). The writer
        // threads stop, the main thread's queue closes, and the error comes back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        File::create(&path).unwrap().set_len(32 << 20).unwrap();
        let file = File::open(&path).unwrap();
        let err =
            ext4::write(&tree(), &Ext4Options::default(), FileRegion::new(&file, 0, 32 << 20))
                .unwrap_err();
        assert!(matches!(err, Ext4Error::Write { .. }), "{err}");
    }
}
