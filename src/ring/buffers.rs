//! The provided buffer ring: buffers the kernel picks from for every
//! multishot receive on this executor, so idle connections hold no receive
//! memory. A buffer goes back to the ring as soon as its bytes are parsed.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

/// The ring and its buffers, in two page-aligned allocations.
///
/// The kernel reads the ring and writes into the buffers until the io_uring
/// instance they are registered with is dropped, so the owner must drop that
/// instance first.
pub struct ProvidedBuffers {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    data: NonNull<u8>,
    data_layout: Layout,
    entries: u16,
    buffer_bytes: u32,
    /// The next ring index to hand a buffer back at.
    tail: u16,
    /// The buffer group id receives name.
    group: u16,
}

const PAGE: usize = 4096;

impl ProvidedBuffers {
    /// `entries` buffers (a power of two, at most 32,768) of `buffer_bytes` each.
    pub fn new(entries: u16, buffer_bytes: u32, group: u16) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 1 << 15 || buffer_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffers must be a power of two up to 32768 and recv_buffer_bytes above 0",
            ));
        }
        let ring_layout =
            Layout::from_size_align(usize::from(entries) * size_of::<BufRingEntry>(), PAGE)
                .map_err(io::Error::other)?;
        let data_layout =
            Layout::from_size_align(usize::from(entries) * buffer_bytes as usize, PAGE)
                .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (entries >= 1, buffer_bytes >= 1).
        let ring = NonNull::new(unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<BufRingEntry>());
        // SAFETY: as above. Zeroed pages are mapped lazily, so buffers never
        // used cost no resident memory.
        let data = NonNull::new(unsafe { alloc::alloc_zeroed(data_layout) });
        let (Some(ring), Some(data)) = (ring, data) else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "provided buffers",
            ));
        };
        let mut buffers = ProvidedBuffers {
            ring,
            ring_layout,
            data,
            data_layout,
            entries,
            buffer_bytes,
            tail: 0,
            group,
        };
        for bid in 0..entries {
            buffers.recycle(bid);
        }
        Ok(buffers)
    }

    /// Register with `submitter`'s ring under this group, every buffer available.
    pub fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is page aligned, `entries` long, and lives
        // until `self` is dropped, which the owner does after dropping the
        // io_uring instance (see the type's documentation).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                self.group,
                0,
            )?;
        }
        self.publish();
        Ok(())
    }

    /// The buffer group id.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buffer_bytes as usize);
        let offset = usize::from(bid) * self.buffer_bytes as usize;
        // SAFETY: in bounds of the data allocation (asserted above); the
        // kernel wrote these bytes before posting the completion that named
        // `bid`, and will not write to it again until `recycle(bid)`, which
        // takes `&mut self` and so cannot overlap this borrow.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(offset), len) }
    }

    /// Hand buffer `bid` back. The kernel sees it after [`publish`].
    ///
    /// [`publish`]: ProvidedBuffers::publish
    pub fn recycle(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index < entries`, inside the ring allocation. The kernel
        // only reads entries between its head and the published tail, and
        // this one is at or past the published tail.
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        let offset = usize::from(bid) * self.buffer_bytes as usize;
        // SAFETY: `offset` is inside the data allocation, since `bid < entries`.
        entry.set_addr(unsafe { self.data.as_ptr().add(offset) } as u64);
        entry.set_len(self.buffer_bytes);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every recycled buffer visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: `ring` is the ring's base address, initialised, and its
        // first entry's reserved field is the shared tail (the kernel's ABI).
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) };
        // SAFETY: the tail is a naturally aligned u16 that the kernel reads
        // concurrently; an atomic release store orders the entry writes
        // before it, as the ABI requires.
        unsafe { AtomicU16::from_ptr(tail.cast_mut()) }.store(self.tail, Ordering::Release);
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts, freed once.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}
