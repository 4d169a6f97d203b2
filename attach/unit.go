package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/attach/ctl"
	"vdisk/attach/loop"
	"vdisk/block"
	"vdisk/export/fuse"
	"vdisk/format/mem"
	"vdisk/format/raw"
)

// Unit is one attached image: the image, the FUSE file that serves it and
// the loop device on that file.
type Unit struct {
	ID       int
	File     string // as given at attach
	Path     string // what was opened
	Format   string
	ReadOnly bool
	SecBits  int

	img    block.Image
	export *fuse.Export
	dev    *loop.Device
	// statFile is an O_PATH descriptor of the image file, for stat when
	// the image does not expose its container.
	statFile *os.File
	// ptFile is the descriptor handed to the kernel for passthrough.
	ptFile *os.File

	mu sync.Mutex // serializes detach
	// gone is set (under mu) once a detach got past the busy check: a
	// detach that waited for it finds nothing left to take down.
	gone bool
	// fmu guards dev, export and statFile against readers other than
	// detach (list, stat, lookup by device, the state file), which must
	// not wait for a detach (it can take half a minute) yet run while
	// one clears the fields and closes what they hold.
	fmu sync.RWMutex
}

// device returns the loop device, or nil once detached.
func (u *Unit) device() *loop.Device {
	u.fmu.RLock()
	defer u.fmu.RUnlock()
	return u.dev
}

// Name is vdN.
func (u *Unit) Name() string { return "vd" + strconv.Itoa(u.ID) }

func (u *Unit) info() ctl.UnitInfo {
	u.fmu.RLock()
	defer u.fmu.RUnlock()
	in := ctl.UnitInfo{
		Unit:        u.Name(),
		File:        u.File,
		Format:      u.Format,
		ReadOnly:    u.ReadOnly,
		SectorSize:  1 << u.SecBits,
		VirtualSize: u.img.Size(),
	}
	if u.dev != nil {
		in.Device = u.dev.Path
		in.DirectIO = u.dev.DirectIO
	}
	if u.export != nil {
		s := &u.export.Stats
		in.Passthrough = u.export.Passthrough()
		in.Counters = ctl.Counters{
			Reads: s.Reads.Load(), Writes: s.Writes.Load(),
			BytesRead: s.ReadBytes.Load(), BytesWritten: s.WriteBytes.Load(),
			Flushes: s.Flushes.Load(), Discards: s.Discards.Load(), Errors: s.Errors.Load(),
		}
		if in.Passthrough && u.dev != nil {
			// Passthrough reads and writes go from the kernel to the image
			// file without reaching the server; the block layer counts them.
			if st, err := u.dev.IOStat(); err == nil {
				c := &in.Counters
				c.Reads += st.Reads
				c.Writes += st.Writes
				c.BytesRead += st.ReadBytes
				c.BytesWritten += st.WriteBytes
			}
		}
	}
	return in
}

// errnoErr is an error carrying the errno the protocol reports.
type errnoErr struct {
	errno syscall.Errno
	err   error
}

func (e *errnoErr) Error() string { return e.err.Error() }
func (e *errnoErr) Unwrap() error { return e.err }

func withErrno(errno syscall.Errno, format string, args ...any) error {
	return &errnoErr{errno: errno, err: fmt.Errorf(format, args...)}
}

func errnoOf(err error) syscall.Errno {
	var ee *errnoErr
	if errors.As(err, &ee) {
		return ee.errno
	}
	return ctl.ErrnoOf(err)
}

// parseUnit accepts vdN, N, /dev/vdN-less forms; it returns -1 for names
// that are not unit names (devices are looked up separately).
func parseUnit(s string) int {
	s = strings.TrimPrefix(s, "vd")
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1<<20 {
		return -1
	}
	return n
}

// openImage opens what an attach asks for.
func openImage(a *ctl.AttachArgs, peer *unix.Ucred) (img block.Image, path, format string, err error) {
	if a.MemSize > 0 {
		return mem.New(a.MemSize), "", "mem", nil
	}
	if a.File == "" {
		return nil, "", "", withErrno(syscall.EINVAL, "no image file given")
	}
	path = a.File
	if !filepath.IsAbs(path) && block.IsLocalName(path) {
		if a.Dir == "" {
			return nil, "", "", withErrno(syscall.EINVAL, "%s: relative name without a working directory", a.File)
		}
		path = filepath.Join(a.Dir, path)
	}
	if block.IsLocalName(path) {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return nil, "", "", withErrno(errnoFromSys(err), "%s: %v", a.File, err)
		}
		if peer != nil && !mayAccess(&st, peer, a.ReadOnly) {
			return nil, "", "", withErrno(syscall.EACCES, "%s: permission denied", a.File)
		}
		if !a.ReadOnly {
			// Root may open a file without write permission for writing;
			// the qcow(4) rule is that a read-only file is not attached
			// read-write, so the permission bits decide, not the caller.
			if st.Mode&0o222 == 0 {
				return nil, "", "", withErrno(syscall.EROFS, "%s: the image file is read-only; use -r to attach it read-only", a.File)
			}
			if err := unix.Access(path, unix.W_OK); errors.Is(err, unix.EROFS) {
				return nil, "", "", withErrno(syscall.EROFS, "%s: the image file is on a read-only file system; use -r to attach it read-only", a.File)
			}
		}
	}
	// The loop device caches what it reads and writes; the image file's
	// page cache would hold a second copy.
	img, err = block.Open(path, block.OpenOptions{Format: a.Format, ReadOnly: a.ReadOnly, CacheSize: a.CacheSize,
		L2CacheSize: a.L2CacheSize, RefcountCacheSize: a.RefcountCacheSize, NoCache: true})
	if err != nil {
		if strings.Contains(err.Error(), "read-only file system") {
			return nil, "", "", withErrno(syscall.EROFS, "%s: %v; use -r to attach it read-only", a.File, err)
		}
		msg := relName(err, path, a.File)
		if !strings.Contains(msg, a.File) {
			msg = a.File + ": " + msg
		}
		return nil, "", "", withErrno(syscall.EINVAL, "%s", msg)
	}
	info, ierr := img.Info()
	format = a.Format
	if ierr == nil && info.Format != "" {
		format = info.Format
	}
	return img, path, format, nil
}

// relName puts the name the user gave back into a message about the
// absolute path the daemon opened.
func relName(err error, path, given string) string {
	if path == given {
		return err.Error()
	}
	return strings.ReplaceAll(err.Error(), path, given)
}

func errnoFromSys(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}

// mayAccess checks the permission bits for a peer that is not root, since
// the daemon (often root) opens the file on its behalf.
func mayAccess(st *unix.Stat_t, peer *unix.Ucred, readOnly bool) bool {
	if peer.Uid == 0 {
		return true
	}
	want := uint32(0o4)
	if !readOnly {
		want |= 0o2
	}
	var bits uint32
	switch {
	case st.Uid == peer.Uid:
		bits = (st.Mode >> 6) & 7
	case st.Gid == peer.Gid:
		bits = (st.Mode >> 3) & 7
	default:
		bits = st.Mode & 7
	}
	return bits&want == want
}

// passthroughFile returns a descriptor of a raw image's file for FUSE
// passthrough, or nil. It is a fresh open of the same file, so it carries
// none of the image locks: those go with the image when it closes. Only a
// raw image whose format was named, and whose file is as long as the
// disk, qualifies: a probed raw image must refuse writes that would make
// it look like another format, which only the userspace path checks.
func passthroughFile(img block.Image, a *ctl.AttachArgs) *os.File {
	if a.NoPassthrough || a.Format != "raw" || a.CacheSize > 0 {
		return nil
	}
	r, ok := img.(*raw.Image)
	if !ok {
		return nil
	}
	type oser interface{ OS() *os.File }
	of, ok := r.File().(oser)
	if !ok {
		return nil
	}
	mode := os.O_RDWR
	if a.ReadOnly {
		mode = os.O_RDONLY
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", of.OS().Fd()), mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	// A file with a partial last sector is a larger disk (the rest reads
	// as zeros), which the kernel reading the file itself would not see.
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() || st.Size() != img.Size() {
		f.Close()
		return nil
	}
	return f
}

// stat is the fstat of the image file.
func (u *Unit) stat() (*ctl.FileStat, error) {
	// Held across the fstat: detach closes statFile only after taking
	// fmu, so the descriptor cannot be closed (and reused) under it.
	u.fmu.RLock()
	defer u.fmu.RUnlock()
	var st unix.Stat_t
	type filer interface{ File() block.File }
	done := false
	if f, ok := u.img.(filer); ok {
		if s, ok := f.File().(block.Stater); ok {
			if fi, err := s.Stat(); err == nil {
				if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
					st = unix.Stat_t{Dev: sys.Dev, Ino: sys.Ino, Mode: sys.Mode, Nlink: sys.Nlink, Uid: sys.Uid, Gid: sys.Gid,
						Rdev: sys.Rdev, Size: sys.Size, Blksize: sys.Blksize, Blocks: sys.Blocks,
						Atim: unix.Timespec(sys.Atim), Mtim: unix.Timespec(sys.Mtim), Ctim: unix.Timespec(sys.Ctim)}
					done = true
				}
			}
		}
	}
	if !done {
		if u.statFile == nil {
			return nil, u.noFile()
		}
		if err := unix.Fstat(int(u.statFile.Fd()), &st); err != nil {
			return nil, withErrno(errnoFromSys(err), "%s: fstat: %v", u.Name(), err)
		}
	}
	return &ctl.FileStat{
		Name: u.File, Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, Nlink: st.Nlink, UID: st.Uid, GID: st.Gid,
		Rdev: st.Rdev, Size: st.Size, Blksize: st.Blksize, Blocks: st.Blocks,
		Atime: ctl.Timespec{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		Mtime: ctl.Timespec{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
		Ctime: ctl.Timespec{Sec: st.Ctim.Sec, Nsec: st.Ctim.Nsec},
	}, nil
}

// noFile explains why a unit has no image file to stat.
func (u *Unit) noFile() error {
	switch {
	case u.Path == "":
		return withErrno(syscall.ENOENT, "%s: a RAM disk has no image file", u.Name())
	case strings.HasPrefix(u.Path, "nbd"):
		return withErrno(syscall.EINVAL, "%s: the image is an NBD export (%s); it has no local file", u.Name(), u.File)
	case strings.HasPrefix(u.Path, "mem:"):
		return withErrno(syscall.ENOENT, "%s: the image is a RAM disk (%s); it has no image file", u.Name(), u.File)
	case block.IsLocalName(u.Path):
		return withErrno(syscall.ENOENT, "%s: the image file %s could not be opened at attach", u.Name(), u.File)
	}
	return withErrno(syscall.EINVAL, "%s: the image (%s) is not a local file", u.Name(), u.File)
}

// detach takes the unit down. A normal detach lets the loop device write
// back what it holds, then closes everything. A forced one first makes the
// FUSE file fail all I/O with EIO, so that users of a busy device see
// errors instead of hanging, flushes and closes the image, and leaves the
// loop device to autoclear when its last user lets go.
func (u *Unit) detach(force bool) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.gone {
		return withErrno(syscall.ENXIO, "%s: no such unit attached", u.Name())
	}
	if u.dev != nil && !force {
		if why := u.dev.Users(); len(why) > 0 {
			return withErrno(syscall.EBUSY, "%s: device %s is busy: %s; use -f to force", u.Name(), u.dev.Path, strings.Join(why, "; "))
		}
	}
	u.gone = true
	var errs []error
	if u.dev != nil {
		if force {
			// Write back what the block device's own cache holds while the
			// FUSE file still accepts it; bounded, since a forced detach
			// must not hang.
			u.dev.Sync(5 * time.Second)
			if u.export != nil {
				u.export.Kill()
			}
			if _, err := u.dev.Release(0); err != nil {
				errs = append(errs, err)
			}
		} else {
			freed, err := u.dev.Release(30 * time.Second)
			if err != nil {
				errs = append(errs, err)
			} else if !freed {
				// Someone opened it after the busy check; the kernel clears
				// it when they close it. Stop serving so nothing hangs.
				if u.export != nil {
					u.export.Kill()
				}
				force = true
			}
		}
		u.fmu.Lock()
		u.dev = nil
		u.fmu.Unlock()
	}
	if u.img != nil && !u.ReadOnly {
		if err := u.img.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("flushing the image: %w", err))
		}
	}
	if u.export != nil {
		if err := u.export.Unmount(force); err != nil {
			errs = append(errs, err)
		}
		os.Remove(u.export.Dir())
		u.fmu.Lock()
		u.export = nil
		u.fmu.Unlock()
	}
	if u.ptFile != nil {
		u.ptFile.Close()
		u.ptFile = nil
	}
	if u.statFile != nil {
		u.fmu.Lock()
		sf := u.statFile
		u.statFile = nil
		u.fmu.Unlock()
		sf.Close()
	}
	if u.img != nil {
		if err := u.img.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the image: %w", err))
		}
	}
	if len(errs) > 0 {
		return withErrno(syscall.EIO, "%s: %v", u.Name(), errors.Join(errs...))
	}
	return nil
}

// adviseRandom turns off the kernel's readahead on a raw image's file: the
// loop device above reads ahead already, and a block device's small random
// reads would otherwise each pull in a readahead window of the file.
func adviseRandom(img block.Image) {
	r, ok := img.(*raw.Image)
	if !ok {
		return
	}
	if of, ok := r.File().(interface{ OS() *os.File }); ok {
		unix.Fadvise(int(of.OS().Fd()), 0, 0, unix.FADV_RANDOM)
	}
}
