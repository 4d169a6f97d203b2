package file

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// direct is a second descriptor of a container opened with O_DIRECT, for
// reads and writes that meet the file's direct I/O alignment: they bypass
// the host page cache, so data an attached image serves is cached once, in
// the block device above it, not also as pages of the image file. Other
// I/O (small metadata updates, unaligned guest requests) stays buffered.
//
// Mixing the two relies on Linux writing back the dirty cached pages a
// direct read or write covers before it, and dropping those a direct
// write covers after it. A buffered write into such a page meanwhile
// (metadata beside a 512-byte direct block in the same page) would leave
// a stale cached page; on ext4 and xfs it cannot happen, as a buffered
// write takes the inode lock exclusively and a direct write holds it,
// shared or exclusive, across its write-back, write and invalidation.
// Buffered reads are not serialised with direct writes, but a read that
// overlaps a write in progress may see either content on any disk.
type direct struct {
	f        *os.File
	memAlign int
	offAlign int64
}

// openDirect opens f's file again with O_DIRECT, or returns nil where the
// file system cannot do direct I/O on it.
func openDirect(f *os.File, readOnly bool) *direct {
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err != nil ||
		stx.Mask&unix.STATX_DIOALIGN == 0 || stx.Dio_mem_align == 0 || stx.Dio_offset_align == 0 ||
		stx.Dio_mem_align > directChunk || stx.Dio_offset_align > directChunk {
		return nil
	}
	mode := os.O_RDWR
	if readOnly {
		mode = os.O_RDONLY
	}
	// Through /proc, the same file whatever has happened to its name.
	d, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), mode|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return &direct{f: d, memAlign: int(stx.Dio_mem_align), offAlign: int64(stx.Dio_offset_align)}
}

// directChunk is the size of the bounce buffers for requests whose memory
// is not aligned (FUSE hands write data in at an odd offset of its buffer).
const directChunk = 1 << 20

var bouncePool = sync.Pool{New: func() any { return new([]byte) }}

// bounce returns an aligned buffer of directChunk bytes; put it back with
// bouncePool.Put.
func (d *direct) bounce() *[]byte {
	bp := bouncePool.Get().(*[]byte)
	if len(*bp) != directChunk || uintptr(unsafe.Pointer(&(*bp)[0]))%uintptr(d.memAlign) != 0 {
		raw := make([]byte, directChunk+d.memAlign)
		skip := (d.memAlign - int(uintptr(unsafe.Pointer(&raw[0]))%uintptr(d.memAlign))) % d.memAlign
		*bp = raw[skip : skip+directChunk : skip+directChunk]
	}
	return bp
}

// fits reports whether a request of n bytes at off can go direct.
func (d *direct) fits(n int, off int64) bool {
	return d != nil && n > 0 && off%d.offAlign == 0 && int64(n)%d.offAlign == 0
}

func (d *direct) memAligned(p []byte) bool {
	return uintptr(unsafe.Pointer(&p[0]))%uintptr(d.memAlign) == 0
}

// errFallback says the rest of a direct request, from the count
// returned, could not go direct (the file system refused it, or a short
// write left it unaligned); the caller does that rest buffered.
var errFallback = errors.New("direct I/O refused")

// directPwrite is pwrite for direct writes; tests replace it to make
// short writes.
var directPwrite = pwrite

// readAt reads p at off with O_DIRECT. A short read means the end of the
// file, as for os.File.ReadAt.
func (d *direct) readAt(p []byte, off int64) (int, error) { return d.transfer(p, off, false) }

// writeAt writes p at off with O_DIRECT.
func (d *direct) writeAt(p []byte, off int64) (int, error) { return d.transfer(p, off, true) }

// transfer moves p to or from the file at off, through bounce buffers
// where p's memory is not aligned.
func (d *direct) transfer(p []byte, off int64, write bool) (int, error) {
	done := 0
	for done < len(p) {
		buf := p[done:]
		var bp *[]byte
		if !d.memAligned(buf) {
			bp = d.bounce()
			buf = (*bp)[:min(len(buf), directChunk)]
			if write {
				copy(buf, p[done:])
			}
		}
		var n int
		var err error
		if write {
			n, err = directPwrite(int(d.f.Fd()), buf, off+int64(done))
		} else {
			n, err = pread(int(d.f.Fd()), buf, off+int64(done))
		}
		if bp != nil {
			if !write {
				copy(p[done:], buf[:max(n, 0)])
			}
			bouncePool.Put(bp)
		}
		if err != nil {
			if errors.Is(err, unix.EINVAL) {
				return done, errFallback
			}
			return done, err
		}
		done += n
		if n < len(buf) {
			if !write {
				return done, io.EOF
			}
			if n == 0 {
				return done, io.ErrShortWrite
			}
			if (off+int64(done))%d.offAlign != 0 {
				// A short write that stopped within a block: the rest
				// cannot go direct.
				return done, errFallback
			}
		}
	}
	return done, nil
}

func pread(fd int, p []byte, off int64) (int, error) {
	for {
		n, err := unix.Pread(fd, p, off)
		if err != unix.EINTR {
			return n, err
		}
	}
}

func pwrite(fd int, p []byte, off int64) (int, error) {
	for {
		n, err := unix.Pwrite(fd, p, off)
		if err != unix.EINTR {
			return n, err
		}
	}
}
