// Package file is the local-file protocol: a container that is a regular
// file or a block device on this host.
package file

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"vdisk/block"
)

func init() {
	block.RegisterProtocol(&block.Protocol{Name: "file", Open: Open})
}

// File is a local container.
type File struct {
	f        *os.File
	name     string
	readOnly bool
	flags    block.OpenFlags
	locked   bool
	// d, with flags.NoCache, is the O_DIRECT path for aligned I/O.
	d *direct
}

// Open opens (or with flags.Create, creates) a local container and takes
// QEMU's image locks unless flags.ForceShare or flags.LockLater.
func Open(name string, flags block.OpenFlags) (block.File, error) {
	mode := os.O_RDWR
	if flags.ReadOnly {
		mode = os.O_RDONLY
	}
	if flags.Create {
		mode = os.O_RDWR | os.O_CREATE
	}
	f, err := os.OpenFile(name, mode|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("could not open '%s': %w", name, unwrapPath(err))
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("could not open '%s': is a directory", name)
	}
	file := &File{f: f, name: name, readOnly: flags.ReadOnly && !flags.Create, flags: flags}
	if !flags.LockLater || flags.Create {
		if err := file.Lock(false); err != nil {
			f.Close()
			return nil, err
		}
	}
	if flags.Create {
		if err := checkCreateSize(f, flags.CreateSize); err != nil {
			f.Close()
			return nil, fmt.Errorf("could not create '%s': %w", name, err)
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("could not truncate '%s': %w", name, err)
		}
	}
	if flags.NoCache && !flags.Create {
		file.d = openDirect(f, file.readOnly)
	}
	return file, nil
}

// Lock takes QEMU's image locks for the flags the file was opened with,
// once. A reader needs a consistent image, so it refuses writers unless
// dataOnly (a raw image, as QEMU's raw format shares writing); even then
// it refuses resizes, as qemu-nbd -r does, so the size it read stays
// true. A writer shares only reading and unchanged writes, as qemu-img
// does; it takes the resize permission unless dataOnly and not opened
// to resize, as a raw writer's size does not change (qemu-io, qemu-nbd),
// which lets raw readers share the image with it.
func (f *File) Lock(dataOnly bool) error {
	if f.locked || (f.flags.ForceShare && f.flags.ReadOnly) {
		return nil
	}
	perm, shared := permConsistentRead, permAll&^(permWrite|permResize)
	switch {
	case !f.flags.ReadOnly || f.flags.Create:
		perm = permConsistentRead | permWrite | permResize
		if dataOnly && !f.flags.Resize && !f.flags.Create {
			perm &^= permResize
		}
		shared = permConsistentRead | permWriteUnchanged
	case dataOnly:
		shared = permAll &^ permResize
	}
	if f.flags.ForceShare {
		perm, shared = 0, permAll
	}
	if err := lockImage(f.f, perm, shared); err != nil {
		return fmt.Errorf("'%s': %w", f.name, err)
	}
	f.locked = true
	return nil
}

// checkCreateSize makes sure the file system can hold a file of size
// bytes before the old content is dropped: growing the file to that size
// either fails (EFBIG, changing nothing) or only appends zeros, which the
// emptying that follows removes again.
func checkCreateSize(f *os.File, size int64) error {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || size <= st.Size() {
		return nil
	}
	if err := f.Truncate(size); err != nil {
		if errors.Is(err, unix.EFBIG) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("the image size %d is too large for this file (%w)", size, unwrapPath(err))
		}
		return unwrapPath(err)
	}
	return nil
}

// unwrapPath strips os.PathError's "open NAME:" so messages name the file once.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func (f *File) Name() string { return f.name }

// OS returns the underlying *os.File, for exports that hand the kernel the
// descriptor itself (FUSE passthrough).
func (f *File) OS() *os.File { return f.f }

func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if f.d.fits(len(p), off) {
		n, err := f.d.readAt(p, off)
		if err != errFallback {
			return n, err
		}
		m, err := f.f.ReadAt(p[n:], off+int64(n))
		return n + m, err
	}
	return f.f.ReadAt(p, off)
}

func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if f.readOnly {
		return 0, block.ErrReadOnly
	}
	if f.d.fits(len(p), off) {
		n, err := f.d.writeAt(p, off)
		if err != errFallback {
			return n, err
		}
		m, err := f.f.WriteAt(p[n:], off+int64(n))
		return n + m, err
	}
	return f.f.WriteAt(p, off)
}

func (f *File) Size() (int64, error) {
	st, err := f.f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode()&os.ModeDevice != 0 {
		// Block devices report size 0 in stat; seeking to the end tells.
		return f.f.Seek(0, io.SeekEnd)
	}
	return st.Size(), nil
}

func (f *File) Truncate(size int64) error {
	if f.readOnly {
		return block.ErrReadOnly
	}
	return f.f.Truncate(size)
}

func (f *File) Sync() error {
	if f.readOnly {
		return nil
	}
	return unix.Fdatasync(int(f.f.Fd()))
}

func (f *File) Close() error {
	if f.d != nil {
		f.d.f.Close()
	}
	return f.f.Close()
}

func (f *File) Stat() (os.FileInfo, error) { return f.f.Stat() }

// AllocatedSize is the space the file occupies (st_blocks), qemu-img's actual-size.
func (f *File) AllocatedSize() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// PunchHole deallocates the range; it then reads as zeros.
func (f *File) PunchHole(off, n int64) error {
	if f.readOnly {
		return block.ErrReadOnly
	}
	err := unix.Fallocate(int(f.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return block.ErrNotSupported
	}
	return err
}

// ZeroRange zeroes the range without writing zero bytes, keeping it allocated.
func (f *File) ZeroRange(off, n int64) error {
	if f.readOnly {
		return block.ErrReadOnly
	}
	err := unix.Fallocate(int(f.f.Fd()), unix.FALLOC_FL_ZERO_RANGE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		return block.ErrNotSupported
	}
	return err
}

// Allocate reserves space for the range (fallocate mode 0).
func (f *File) Allocate(off, n int64) error {
	if f.readOnly {
		return block.ErrReadOnly
	}
	err := unix.Fallocate(int(f.f.Fd()), 0, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return block.ErrNotSupported
	}
	return err
}

// MapData reports data and holes with SEEK_DATA/SEEK_HOLE. Ranges beyond
// the end of the file read as zeros and are reported as holes.
func (f *File) MapData(off, n int64) ([]block.Extent, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	end := off + n
	var out []block.Extent
	add := func(o, l int64, st block.Status) {
		if l > 0 {
			out = append(out, block.Extent{Offset: o, Length: l, Status: st, HostOffset: o, File: f.name})
		}
	}
	fd := int(f.f.Fd())
	for off < end {
		if off >= size {
			add(off, end-off, block.StatusZero)
			break
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			// No data from off to the end of the file.
			add(off, end-off, block.StatusZero)
			break
		}
		if err != nil {
			// No SEEK_DATA support: everything is data.
			add(off, end-off, block.StatusData)
			break
		}
		if data > off {
			add(off, min(data, end)-off, block.StatusZero)
			off = min(data, end)
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		add(off, min(hole, end)-off, block.StatusData)
		off = min(hole, end)
	}
	return out, nil
}

var (
	_ block.HolePuncher    = (*File)(nil)
	_ block.ZeroRanger     = (*File)(nil)
	_ block.Allocator      = (*File)(nil)
	_ block.DataMapper     = (*File)(nil)
	_ block.Stater         = (*File)(nil)
	_ block.AllocatedSizer = (*File)(nil)
	_ block.Locker         = (*File)(nil)
)
