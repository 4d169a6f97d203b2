// Package fuse exports one image's raw view as a single regular file in a
// FUSE file system, the way NetBSD's puffs passes block requests to
// userspace: the kernel turns reads, writes, fsync and fallocate on the
// file into requests that this package serves from a block.Image. A loop
// device on that file makes it a block device.
//
// The file is opened with FOPEN_DIRECT_IO, so the kernel keeps no page
// cache of its own for it (the loop device above has one); for raw images
// the kernel can instead pass reads and writes straight to the image file
// (FUSE passthrough), falling back to served requests where it refuses.
package fuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"vdisk/block"
)

// FileName is the name of the image file inside the mount.
const FileName = "disk"

// MaxRequest is the largest read or write the kernel sends in one piece.
const MaxRequest = 1 << 20

// Options configure an export.
type Options struct {
	// ReadOnly makes the file and the mount read-only.
	ReadOnly bool
	// Passthrough, when not nil, is an open descriptor of a raw image's
	// file whose bytes are the image's bytes: the kernel reads and writes
	// it directly.
	Passthrough *os.File
	// Trace, when set, logs every request with its latency.
	Trace *slog.Logger
	// Unit names the export in traces and in the mount's source.
	Unit string

	// backing, when set (by tests), is the descriptor offered to the
	// kernel at open in place of Passthrough, so that the registration
	// can be made to fail after the probe at mount succeeded.
	backing *os.File
}

// Stats count the requests served. Passthrough reads and writes bypass
// the server and are not counted here; the daemon takes them from the
// loop device's statistics.
type Stats struct {
	Reads, Writes         atomic.Uint64
	ReadBytes, WriteBytes atomic.Uint64
	Flushes, Discards     atomic.Uint64
	Errors                atomic.Uint64
}

// Export is a mounted FUSE file system holding one file.
type Export struct {
	img    block.Image
	opts   Options
	dir    string
	server *gofuse.Server
	root   *rootNode
	file   *fileNode
	Stats  Stats

	// dead makes every request fail with EIO (forced detach). Requests
	// hold gate for reading while they use the image, so that once Kill
	// returns none is still in it and the image may be closed.
	dead atomic.Bool
	gate sync.RWMutex
	// passthrough tells whether the latest open of the file got a
	// backing file from the kernel; the kernel passes all handles of the
	// file through, or none.
	passthrough atomic.Bool

	unmountOnce sync.Once
	unmountErr  error
}

type rootNode struct {
	fs.Inode
	e *Export
}

type fileNode struct {
	fs.Inode
	e *Export
}

type fileHandle struct {
	e  *Export
	pt bool
}

var (
	_ fs.NodeOnAdder   = (*rootNode)(nil)
	_ fs.NodeStatfser  = (*rootNode)(nil)
	_ fs.NodeGetattrer = (*rootNode)(nil)

	_ fs.NodeGetattrer  = (*fileNode)(nil)
	_ fs.NodeSetattrer  = (*fileNode)(nil)
	_ fs.NodeOpener     = (*fileNode)(nil)
	_ fs.NodeReader     = (*fileNode)(nil)
	_ fs.NodeWriter     = (*fileNode)(nil)
	_ fs.NodeFsyncer    = (*fileNode)(nil)
	_ fs.NodeFlusher    = (*fileNode)(nil)
	_ fs.NodeAllocater  = (*fileNode)(nil)
	_ fs.NodeStatfser   = (*fileNode)(nil)
	_ fs.NodeGetxattrer = (*fileNode)(nil)

	_ fs.FilePassthroughFder = (*fileHandle)(nil)
)

// Mount serves img as dir/disk. dir must exist and be empty.
func Mount(img block.Image, dir string, opts Options) (*Export, error) {
	e := &Export{img: img, opts: opts, dir: dir}
	e.root = &rootNode{e: e}
	e.file = &fileNode{e: e}
	// The file never changes size or type behind the kernel's back, so
	// attributes may be cached; a forced detach invalidates them on purpose.
	attr := time.Hour
	mopts := gofuse.MountOptions{
		FsName:       "vdisk:" + opts.Unit,
		Name:         "vdisk",
		MaxWrite:     MaxRequest,
		MaxReadAhead: MaxRequest,
		// Loop devices queue many requests; the default of 12 background
		// requests would throttle them.
		MaxBackground:        128,
		DirectMount:          true,
		DisableXAttrs:        true,
		IgnoreSecurityLabels: true,
		// Async direct I/O lets the kernel keep many direct requests of one
		// file in flight.
		ExtraCapabilities: gofuse.CAP_ASYNC_DIO,
	}
	if opts.ReadOnly {
		mopts.Options = append(mopts.Options, "ro")
		mopts.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
	}
	mopts.Logger = nil
	nodeFS := fs.NewNodeFS(e.root, &fs.Options{
		MountOptions: mopts,
		AttrTimeout:  &attr,
		EntryTimeout: &attr,
	})
	server, err := gofuse.NewServer(&openWatcher{RawFileSystem: nodeFS, e: e}, dir, &mopts)
	if err != nil {
		return nil, fmt.Errorf("fuse: mounting %s: %w", dir, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, fmt.Errorf("fuse: mounting %s: %w", dir, err)
	}
	e.server = server
	if opts.Passthrough != nil && !e.probePassthrough() {
		// The kernel refuses backing files (no CAP_PASSTHROUGH, not
		// privileged, stacking too deep): serve every request instead.
		e.opts.Passthrough = nil
	}
	return e, nil
}

// probePassthrough registers the backing file once to learn whether the
// kernel accepts it; the registration for real happens at open.
func (e *Export) probePassthrough() bool {
	if e.server.KernelSettings().Flags64()&gofuse.CAP_PASSTHROUGH == 0 {
		return false
	}
	id, errno := e.server.RegisterBackingFd(&gofuse.BackingMap{Fd: int32(e.opts.Passthrough.Fd())})
	if errno != 0 {
		return false
	}
	e.server.UnregisterBackingFd(id)
	return true
}

// Path is the file the loop device goes on.
func (e *Export) Path() string { return filepath.Join(e.dir, FileName) }

// Dir is the mount point.
func (e *Export) Dir() string { return e.dir }

// Passthrough reports whether the kernel passes I/O straight to the image file.
func (e *Export) Passthrough() bool { return e.passthrough.Load() }

// Kill makes all further I/O on the file fail with EIO instead of reaching
// the image, including passthrough I/O, which never reaches this server:
// the file reports an impossible size, and the kernel, seeing it, marks
// the inode bad, after which every read and write fails with EIO.
func (e *Export) Kill() {
	e.gate.Lock()
	was := e.dead.Swap(true)
	e.gate.Unlock()
	if was {
		return
	}
	e.file.NotifyContent(-1, 0)
	// The stat makes the kernel fetch the poisoned attributes now.
	var st unix.Stat_t
	_ = unix.Stat(e.Path(), &st)
}

// Unmount takes the file system down. With abort, the FUSE connection is
// aborted first so that requests still queued fail instead of waiting.
func (e *Export) Unmount(abort bool) error {
	e.unmountOnce.Do(func() {
		if abort {
			abortConnection(e.dir)
		}
		err := e.server.Unmount()
		if err != nil {
			// A busy mount (the loop device still holds the file) goes
			// lazily; the connection ends when the last user lets go.
			if uerr := unix.Unmount(e.dir, unix.MNT_DETACH); uerr != nil && !errors.Is(uerr, unix.EINVAL) {
				e.unmountErr = fmt.Errorf("fuse: unmounting %s: %w", e.dir, err)
			}
		}
		if abort {
			// Nothing more will be served; do not wait for the kernel.
			return
		}
		done := make(chan struct{})
		go func() { e.server.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	return e.unmountErr
}

// abortConnection aborts the FUSE connection mounted at dir through
// /sys/fs/fuse/connections, named by the mount's device number.
func abortConnection(dir string) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return
	}
	AbortDev(st.Dev)
}

// AbortDev aborts the FUSE connection of the mount with device number dev.
func AbortDev(dev uint64) {
	path := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(dev)|unix.Major(dev)<<20)
	_ = os.WriteFile(path, []byte("1\n"), 0)
}

func (r *rootNode) OnAdd(ctx context.Context) {
	mode := uint32(syscall.S_IFREG)
	ch := r.NewPersistentInode(ctx, r.e.file, fs.StableAttr{Mode: mode, Ino: 2})
	r.AddChild(FileName, ch, true)
}

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	out.Mode = 0o755
	if r.e.opts.ReadOnly {
		out.Mode = 0o555
	}
	out.Nlink = 2
	return 0
}

func (r *rootNode) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	r.e.statfs(out)
	return 0
}

func (n *fileNode) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	n.e.statfs(out)
	return 0
}

// statfs reports 4 KiB blocks: the loop driver takes the backing file
// system's block size as its discard granularity.
func (e *Export) statfs(out *gofuse.StatfsOut) {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(e.img.Size()) / 4096
	out.NameLen = 255
}

func (n *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}

func (n *fileNode) Getattr(ctx context.Context, f fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	e := n.e
	out.Mode = 0o600
	if e.opts.ReadOnly {
		out.Mode = 0o400
	}
	out.Nlink = 1
	out.Size = uint64(e.img.Size())
	out.Blksize = 4096
	out.Blocks = (out.Size + 511) / 512
	if e.dead.Load() {
		// Larger than any valid file: the kernel marks the inode bad (see Kill).
		out.Size = 1 << 63
	}
	return 0
}

// Setattr accepts only what changes nothing: the size is the image's.
func (n *fileNode) Setattr(ctx context.Context, f fs.FileHandle, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.e.img.Size() {
		return syscall.EPERM
	}
	return n.Getattr(ctx, f, out)
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	e := n.e
	if e.dead.Load() {
		return nil, 0, syscall.EIO
	}
	if e.opts.ReadOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	if e.opts.Passthrough != nil {
		// The bridge registers the descriptor with the kernel and sets
		// FOPEN_PASSTHROUGH (which FOPEN_DIRECT_IO would override); if the
		// kernel refuses, openWatcher makes the handle direct-I/O.
		return &fileHandle{e: e, pt: true}, 0, 0
	}
	return &fileHandle{e: e}, gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (h *fileHandle) PassthroughFd() (int, bool) {
	if !h.pt || h.e.dead.Load() {
		return 0, false
	}
	if b := h.e.opts.backing; b != nil {
		return int(b.Fd()), true
	}
	return int(h.e.opts.Passthrough.Fd()), true
}

// openWatcher learns how each open of the file turned out. Only after
// fileNode.Open returns does the bridge register the backing file, and
// if the kernel refuses it, the handle is served in userspace with the
// flags Open chose for passthrough, which let the kernel cache pages.
// The watcher sees the final reply: it records whether the kernel passes
// I/O through, and makes a handle that fell back direct-I/O like any
// other served handle.
type openWatcher struct {
	gofuse.RawFileSystem
	e *Export
}

func (w *openWatcher) Open(cancel <-chan struct{}, in *gofuse.OpenIn, out *gofuse.OpenOut) gofuse.Status {
	st := w.RawFileSystem.Open(cancel, in, out)
	if st != gofuse.OK || w.e.opts.Passthrough == nil {
		return st
	}
	if out.OpenFlags&gofuse.FOPEN_PASSTHROUGH != 0 {
		w.e.passthrough.Store(true)
	} else {
		out.OpenFlags |= gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES
		w.e.passthrough.Store(false)
	}
	return st
}

// enter admits a request to the image, or counts an error and refuses it
// after a forced detach. An admitted request calls e.gate.RUnlock when done.
func (e *Export) enter() bool {
	e.gate.RLock()
	if e.dead.Load() {
		e.gate.RUnlock()
		e.Stats.Errors.Add(1)
		return false
	}
	return true
}

func (e *Export) trace(op string, off, n int64, start time.Time, err error) {
	if e.opts.Trace == nil {
		return
	}
	attrs := []any{"unit", e.opts.Unit, "op", op, "offset", off, "length", n, "latency", time.Since(start)}
	if err != nil {
		attrs = append(attrs, "error", err)
	}
	e.opts.Trace.Info("request", attrs...)
}

func (e *Export) fail(err error) syscall.Errno {
	e.Stats.Errors.Add(1)
	switch {
	case errors.Is(err, block.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, block.ErrOutOfRange):
		return syscall.EINVAL
	case errors.Is(err, block.ErrNotSupported):
		return syscall.EOPNOTSUPP
	}
	var en syscall.Errno
	if errors.As(err, &en) && en != 0 {
		return en
	}
	return syscall.EIO
}

func (n *fileNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	e := n.e
	start := time.Now()
	if !e.enter() {
		return nil, syscall.EIO
	}
	defer e.gate.RUnlock()
	size := e.img.Size()
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return gofuse.ReadResultData(nil), 0
	}
	if int64(len(dest)) > size-off {
		dest = dest[:size-off]
	}
	_, err := e.img.ReadAt(dest, off)
	e.trace("read", off, int64(len(dest)), start, err)
	if err != nil {
		return nil, e.fail(err)
	}
	e.Stats.Reads.Add(1)
	e.Stats.ReadBytes.Add(uint64(len(dest)))
	return gofuse.ReadResultData(dest), 0
}

func (n *fileNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	e := n.e
	start := time.Now()
	if !e.enter() {
		return 0, syscall.EIO
	}
	defer e.gate.RUnlock()
	if e.opts.ReadOnly {
		e.Stats.Errors.Add(1)
		return 0, syscall.EROFS
	}
	size := e.img.Size()
	if off < 0 || off >= size {
		if off == size && len(data) == 0 {
			return 0, 0
		}
		e.Stats.Errors.Add(1)
		return 0, syscall.ENOSPC
	}
	if int64(len(data)) > size-off {
		data = data[:size-off]
	}
	w, err := e.img.WriteAt(data, off)
	e.trace("write", off, int64(len(data)), start, err)
	if err != nil {
		return uint32(w), e.fail(err)
	}
	e.Stats.Writes.Add(1)
	e.Stats.WriteBytes.Add(uint64(w))
	return uint32(w), 0
}

func (n *fileNode) flush(op string) syscall.Errno {
	e := n.e
	start := time.Now()
	if !e.enter() {
		return syscall.EIO
	}
	defer e.gate.RUnlock()
	err := e.img.Flush()
	e.trace(op, 0, 0, start, err)
	if err != nil {
		return e.fail(err)
	}
	e.Stats.Flushes.Add(1)
	return 0
}

// Fsync is how the loop device forwards a flush (REQ_OP_FLUSH, fsync and
// sync of the file system on it).
func (n *fileNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if n.e.opts.ReadOnly {
		return 0
	}
	return n.flush("flush")
}

// Flush is close(2) of a descriptor; nothing needs to be durable then.
func (n *fileNode) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// Allocate serves fallocate: the loop driver turns discard into
// PUNCH_HOLE and write-zeroes into ZERO_RANGE (or PUNCH_HOLE when the
// block layer allows unmapping), so both must read back as zeros.
func (n *fileNode) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	e := n.e
	start := time.Now()
	if !e.enter() {
		return syscall.EIO
	}
	defer e.gate.RUnlock()
	if e.opts.ReadOnly {
		return syscall.EROFS
	}
	isize := uint64(e.img.Size())
	if off >= isize || size == 0 {
		if mode&unix.FALLOC_FL_KEEP_SIZE != 0 || mode&unix.FALLOC_FL_PUNCH_HOLE != 0 {
			return 0
		}
		return syscall.ENOSPC
	}
	size = min(size, isize-off)
	var err error
	op := "allocate"
	switch {
	case mode&unix.FALLOC_FL_PUNCH_HOLE != 0:
		op = "discard"
		err = e.img.WriteZeroes(int64(off), int64(size), block.ZeroMayUnmap)
		if err == nil {
			e.Stats.Discards.Add(1)
		}
	case mode&unix.FALLOC_FL_ZERO_RANGE != 0:
		op = "write-zeroes"
		err = e.img.WriteZeroes(int64(off), int64(size), 0)
	case mode&^unix.FALLOC_FL_KEEP_SIZE == 0:
		// Plain preallocation within the image: space is the image's business.
	default:
		return syscall.EOPNOTSUPP
	}
	e.trace(op, int64(off), int64(size), start, err)
	if err != nil {
		return e.fail(err)
	}
	return 0
}
