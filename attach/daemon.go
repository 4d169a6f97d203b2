// Package attach is the vdisk daemon: it hosts attached units (vd0, vd1,
// …), each an image served as a file through FUSE with a loop device on
// that file, and answers control requests (package ctl) on a Unix socket.
package attach

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/attach/ctl"
	"vdisk/attach/loop"
	"vdisk/export/fuse"
)

// Config configures a daemon.
type Config struct {
	StateDir string
	// Trace logs every I/O request with its latency.
	Trace bool
	// Log receives the daemon's messages; nil means stderr.
	Log *slog.Logger
}

// Daemon hosts the units.
type Daemon struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File
	ln   *net.UnixListener

	mu    sync.Mutex
	units map[int]*Unit
	// reserved holds unit numbers being attached.
	reserved map[int]bool
	closing  bool
}

// New prepares the state directory, makes sure no other daemon uses it,
// and cleans up what a previous daemon that died left behind.
func New(cfg Config) (*Daemon, error) {
	d := &Daemon{cfg: cfg, log: cfg.Log, units: map[int]*Unit{}, reserved: map[int]bool{}}
	if d.log == nil {
		d.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	dir := cfg.StateDir
	if err := PrepareStateDir(dir); err != nil {
		return nil, err
	}
	lk, err := os.OpenFile(filepath.Join(dir, ctl.LockName), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := unix.Flock(int(lk.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lk.Close()
		return nil, fmt.Errorf("another vdisk daemon is running with state directory %s", dir)
	}
	d.lock = lk
	d.cleanStale()
	sock := filepath.Join(dir, ctl.SocketName)
	os.Remove(sock)
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		lk.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	os.Chmod(sock, 0o600)
	ln.SetUnlinkOnClose(true)
	d.ln = ln
	os.WriteFile(filepath.Join(dir, ctl.PIDName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	d.saveState()
	return d, nil
}

// PrepareStateDir makes dir fit to be a state directory. A missing one is
// created with mode 0700. An existing one is used as it is, never
// chmodded, since the name may be a shared directory such as /tmp: it must
// be a real directory (not a symlink), owned by this user, and not
// writable by group or others, who could otherwise replace the socket or
// the FUSE mount points in it.
func PrepareStateDir(dir string) error {
	dir = filepath.Clean(dir)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			// The umask may have taken bits; this directory is ours.
			err = os.Chmod(dir, 0o700)
		} else if errors.Is(err, os.ErrExist) {
			err = nil // made by a concurrent start; checked below
		}
		if err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("state directory %s is a symbolic link; name the directory itself", dir)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("state directory %s is not a directory", dir)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("state directory %s is owned by uid %d, not by this user (uid %d)", dir, st.Uid, os.Geteuid())
	case st.Mode&0o022 != 0:
		return fmt.Errorf("state directory %s is writable by group or others (mode %04o); use a private directory (mode 0700)", dir, st.Mode&0o7777)
	}
	return nil
}

// Serve answers requests until ctx ends, then detaches every unit
// (flushing each image) and returns.
func (d *Daemon) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		d.ln.Close()
	}()
	var wg sync.WaitGroup
	for {
		conn, err := d.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			d.log.Error("accept", "error", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.handle(conn)
		}()
	}
	wg.Wait()
	d.Shutdown()
	return nil
}

// Shutdown detaches every unit: cleanly where the device is unused,
// forcibly (I/O then fails with EIO) where it is not.
func (d *Daemon) Shutdown() {
	d.mu.Lock()
	d.closing = true
	units := make([]*Unit, 0, len(d.units))
	for _, u := range d.units {
		units = append(units, u)
	}
	d.mu.Unlock()
	for _, u := range units {
		err := u.detach(false)
		if errnoOf(err) == syscall.EBUSY {
			d.log.Warn("unit busy at shutdown; detaching by force", "unit", u.Name(), "reason", err)
			err = u.detach(true)
		}
		if err != nil {
			d.log.Error("detach at shutdown", "unit", u.Name(), "error", err)
		} else {
			d.log.Info("detached", "unit", u.Name())
		}
		d.mu.Lock()
		delete(d.units, u.ID)
		d.mu.Unlock()
	}
	d.saveState()
	os.Remove(filepath.Join(d.cfg.StateDir, ctl.PIDName))
	os.Remove(filepath.Join(d.cfg.StateDir, ctl.StateName))
	d.lock.Close()
}

func (d *Daemon) handle(conn *net.UnixConn) {
	defer conn.Close()
	defer func() {
		// A bug in one request must not take down every attached unit.
		if r := recover(); r != nil {
			d.log.Error("internal error", "panic", r, "stack", string(debug.Stack()))
			b, _ := json.Marshal(&ctl.Response{Version: ctl.Version, Errno: "EIO", Error: fmt.Sprintf("internal error: %v", r)})
			conn.Write(append(b, '\n'))
		}
	}()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	resp := &ctl.Response{Version: ctl.Version}
	cred, err := peerCred(conn)
	if err == nil && cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		err = withErrno(syscall.EPERM, "permission denied: only root or the daemon's owner may control units")
	}
	var req ctl.Request
	if err == nil {
		// Requests are small; a peer may not make the daemon buffer more.
		line, rerr := bufio.NewReader(io.LimitReader(conn, maxRequest)).ReadBytes('\n')
		if rerr != nil && len(line) == 0 {
			return
		}
		if jerr := json.Unmarshal(line, &req); jerr != nil {
			err = withErrno(syscall.EINVAL, "malformed request: %v", jerr)
		} else if req.Version != ctl.Version {
			err = withErrno(syscall.EPROTO, "protocol version %d is not supported (this daemon speaks %d)", req.Version, ctl.Version)
		}
	}
	if err == nil {
		// Attach and detach may take longer than a request should wait to
		// be read; the client bounds the whole exchange.
		conn.SetDeadline(time.Time{})
		err = d.dispatch(&req, resp, cred)
	}
	if err != nil {
		resp.OK = false
		resp.Errno = ctl.ErrnoName(errnoOf(err))
		resp.Error = err.Error()
	} else {
		resp.OK = true
	}
	b, _ := json.Marshal(resp)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write(append(b, '\n'))
}

// maxRequest bounds one control request (a JSON line).
const maxRequest = 1 << 20

func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return nil, withErrno(syscall.EPERM, "SO_PEERCRED: %v", err)
	}
	return cred, nil
}

func (d *Daemon) dispatch(req *ctl.Request, resp *ctl.Response, cred *unix.Ucred) error {
	switch req.Op {
	case ctl.OpPing:
		return nil
	case ctl.OpAttach:
		if req.Attach == nil {
			return withErrno(syscall.EINVAL, "attach: no arguments")
		}
		u, err := d.attach(req.Attach, cred)
		if err != nil {
			return err
		}
		info := u.info()
		resp.Unit = &info
		return nil
	case ctl.OpDetach:
		u, err := d.lookup(req.Unit)
		if err != nil {
			return err
		}
		info := u.info()
		if err := d.detach(u, req.Force); err != nil {
			return err
		}
		resp.Unit = &info
		return nil
	case ctl.OpList:
		d.mu.Lock()
		ids := make([]int, 0, len(d.units))
		for id := range d.units {
			ids = append(ids, id)
		}
		sort.Ints(ids)
		resp.Units = []ctl.UnitInfo{}
		for _, id := range ids {
			resp.Units = append(resp.Units, d.units[id].info())
		}
		d.mu.Unlock()
		return nil
	case ctl.OpRescan:
		u, err := d.lookup(req.Unit)
		if err != nil {
			return err
		}
		parts, err := d.rescan(u)
		resp.Partitions = parts
		return err
	case ctl.OpStat:
		u, err := d.lookup(req.Unit)
		if err != nil {
			return err
		}
		st, err := u.stat()
		if err != nil {
			return err
		}
		info := u.info()
		resp.Stat, resp.Unit = st, &info
		return nil
	}
	return withErrno(syscall.EINVAL, "unknown request %q", req.Op)
}

// lookup finds a unit by name (vd0, 0) or device (/dev/loop3, loop3).
func (d *Daemon) lookup(name string) (*Unit, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if id := parseUnit(name); id >= 0 {
		if u, ok := d.units[id]; ok {
			return u, nil
		}
		return nil, withErrno(syscall.ENXIO, "%s: no such unit attached", name)
	}
	dev := name
	if !strings.HasPrefix(dev, "/") {
		dev = "/dev/" + dev
	}
	var rdev uint64
	var st unix.Stat_t
	if unix.Stat(dev, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
		rdev = st.Rdev
	}
	for _, u := range d.units {
		ud := u.device()
		if ud == nil {
			continue
		}
		if ud.Path == dev || (rdev != 0 && ud.Rdev == rdev) {
			return u, nil
		}
	}
	return nil, withErrno(syscall.ENXIO, "%s: not attached to a vdisk unit", name)
}

func (d *Daemon) detach(u *Unit, force bool) error {
	err := u.detach(force)
	if e := errnoOf(err); err != nil && (e == syscall.EBUSY || e == syscall.ENXIO) {
		// Busy, or a concurrent detach took it down first; in the latter
		// case its number may already belong to a new unit.
		return err
	}
	// Whatever went wrong past the busy check, the unit is gone. Another
	// unit may have the number by now only if this one was removed.
	d.mu.Lock()
	if d.units[u.ID] == u {
		delete(d.units, u.ID)
	}
	d.mu.Unlock()
	d.saveState()
	if err != nil {
		d.log.Error("detach", "unit", u.Name(), "error", err)
		return err
	}
	d.log.Info("detached", "unit", u.Name(), "force", force)
	return nil
}

// attach opens the image, mounts its FUSE file and binds a loop device.
// On any failure everything made so far is undone.
func (d *Daemon) attach(a *ctl.AttachArgs, cred *unix.Ucred) (_ *Unit, err error) {
	secbits := a.SecBits
	if secbits == 0 {
		secbits = 9
	}
	if secbits < 9 {
		return nil, withErrno(syscall.EINVAL, "sector size 2^%d is not supported: the loop driver presents 512 bytes or more (-s 9 and up)", a.SecBits)
	}
	// Which sizes from 1 KiB up the loop driver presents depends on the
	// kernel; loop.Attach reports ErrBlockSize for the rest.
	if secbits > 30 {
		return nil, withErrno(syscall.EINVAL, "sector size 2^%d is not supported", a.SecBits)
	}
	id, err := d.reserve(a.Unit)
	if err != nil {
		return nil, err
	}
	u := &Unit{ID: id, File: a.File, ReadOnly: a.ReadOnly, SecBits: secbits}
	defer func() {
		d.mu.Lock()
		delete(d.reserved, id)
		if err == nil {
			d.units[id] = u
		}
		d.mu.Unlock()
		if err == nil {
			d.saveState()
		}
	}()
	if a.MemSize > 0 {
		u.File = fmt.Sprintf("mem:%d", a.MemSize)
	}
	defer func() {
		if err != nil {
			u.detach(true)
		}
	}()
	img, path, format, err := openImage(a, cred)
	if err != nil {
		return nil, err
	}
	u.img, u.Path, u.Format = img, path, format
	if img.Size() < 1<<secbits {
		return nil, withErrno(syscall.EINVAL, "%s: the image is smaller than one %d-byte sector (virtual size %d)", u.File, 1<<secbits, img.Size())
	}
	if path != "" {
		if f, err := os.OpenFile(path, unix.O_PATH|unix.O_CLOEXEC, 0); err == nil {
			u.statFile = f
		}
	}
	if !d.cfg.Trace {
		// Passthrough I/O never reaches the daemon, so a trace would miss it.
		u.ptFile = passthroughFile(img, a)
	}
	adviseRandom(img)
	dir := filepath.Join(d.cfg.StateDir, ctl.FUSEDir, u.Name())
	os.RemoveAll(dir) // an empty leftover; RemoveAll never crosses a live mount's contents here
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, withErrno(syscall.EIO, "%s: %v", u.Name(), err)
	}
	var trace *slog.Logger
	if d.cfg.Trace {
		trace = d.log
	}
	u.export, err = fuse.Mount(img, dir, fuse.Options{ReadOnly: a.ReadOnly, Passthrough: u.ptFile, Trace: trace, Unit: u.Name()})
	if err != nil {
		os.Remove(dir)
		return nil, withErrno(syscall.EIO, "%s: %v", u.Name(), err)
	}
	mode := os.O_RDWR
	if a.ReadOnly {
		mode = os.O_RDONLY
	}
	f, err := os.OpenFile(u.export.Path(), mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, withErrno(syscall.EIO, "%s: opening the FUSE file: %v", u.Name(), err)
	}
	defer f.Close()
	u.dev, err = loop.Attach(f, loop.Options{ReadOnly: a.ReadOnly, BlockSize: 1 << secbits, DirectIO: true})
	if errors.Is(err, loop.ErrBlockSize) {
		return nil, withErrno(syscall.EINVAL, "sector size 2^%d (%d bytes) is not supported by this kernel's loop driver", secbits, 1<<secbits)
	}
	if err != nil {
		return nil, withErrno(errnoFromSys(err), "%s: %v", u.Name(), err)
	}
	d.addPartitions(u)
	d.log.Info("attached", "unit", u.Name(), "device", u.dev.Path, "file", u.File, "format", u.Format,
		"read-only", u.ReadOnly, "sector-size", 1<<secbits, "passthrough", u.export.Passthrough(), "direct-io", u.dev.DirectIO)
	return u, nil
}

// reserve claims a unit number: the one asked for, or the lowest free.
func (d *Daemon) reserve(want string) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return 0, withErrno(syscall.ENODEV, "the daemon is shutting down")
	}
	if want != "" {
		id := parseUnit(want)
		if id < 0 {
			return 0, withErrno(syscall.EINVAL, "%s: not a unit name (vd0, vd1, …)", want)
		}
		if _, ok := d.units[id]; ok || d.reserved[id] {
			return 0, withErrno(syscall.EBUSY, "vd%d: unit is in use", id)
		}
		d.reserved[id] = true
		return id, nil
	}
	for id := 0; ; id++ {
		if _, ok := d.units[id]; !ok && !d.reserved[id] {
			d.reserved[id] = true
			return id, nil
		}
	}
}

// state is what the daemon records for the cleanup after a crash.
type state struct {
	PID   int          `json:"pid"`
	Units []stateEntry `json:"units"`
}

type stateEntry struct {
	Unit   string `json:"unit"`
	Device string `json:"device"`
	Loop   int    `json:"loop"`
	Mount  string `json:"mount"`
	File   string `json:"file"`
}

func (d *Daemon) saveState() {
	d.mu.Lock()
	s := state{PID: os.Getpid(), Units: []stateEntry{}}
	for _, u := range d.units {
		e := stateEntry{Unit: u.Name(), File: u.File, Loop: -1}
		u.fmu.RLock()
		if u.dev != nil {
			e.Device, e.Loop = u.dev.Path, u.dev.Num
		}
		if u.export != nil {
			e.Mount = u.export.Dir()
		}
		u.fmu.RUnlock()
		s.Units = append(s.Units, e)
	}
	d.mu.Unlock()
	b, _ := json.MarshalIndent(s, "", "  ")
	tmp := filepath.Join(d.cfg.StateDir, ctl.StateName+".tmp")
	if os.WriteFile(tmp, b, 0o600) == nil {
		os.Rename(tmp, filepath.Join(d.cfg.StateDir, ctl.StateName))
	}
}

// cleanStale undoes what a daemon that died left: FUSE mounts under the
// state directory (dead once their server is gone) are aborted and lazily
// unmounted, and loop devices bound to files in them are cleared when
// nobody uses them (autoclear does it when their last user goes).
func (d *Daemon) cleanStale() {
	fuseDir := filepath.Join(d.cfg.StateDir, ctl.FUSEDir)
	if abs, err := filepath.Abs(fuseDir); err == nil {
		fuseDir = abs
	}
	if real, err := filepath.EvalSymlinks(fuseDir); err == nil {
		fuseDir = real
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range loops {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue
		}
		back := strings.TrimSpace(string(b))
		if !strings.HasPrefix(back, fuseDir+"/") {
			continue
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(bf)))
		num, err := strconv.Atoi(strings.TrimPrefix(name, "loop"))
		if err != nil {
			continue
		}
		rdev, _ := loop.ReadDevNum(filepath.Join("/sys/block", name, "dev"))
		if why := loop.Users(name, rdev); len(why) > 0 {
			d.log.Warn("stale loop device still in use; it is released when its users let go", "device", "/dev/"+name, "reason", strings.Join(why, "; "))
			continue
		}
		if err := loop.ClearStale(num); err != nil {
			d.log.Warn("clearing stale loop device", "device", "/dev/"+name, "error", err)
		} else {
			d.log.Info("cleared stale loop device", "device", "/dev/"+name)
		}
	}
	for _, m := range mountsUnder(fuseDir) {
		var st unix.Stat_t
		if unix.Lstat(m, &st) == nil {
			fuse.AbortDev(st.Dev)
		} else if dev, ok := mountDev(m); ok {
			fuse.AbortDev(dev)
		}
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			d.log.Warn("unmounting stale FUSE mount", "mount", m, "error", err)
		} else {
			d.log.Info("unmounted stale FUSE mount", "mount", m)
		}
	}
	ents, _ := os.ReadDir(fuseDir)
	for _, e := range ents {
		os.Remove(filepath.Join(fuseDir, e.Name()))
	}
	os.Remove(filepath.Join(d.cfg.StateDir, ctl.StateName))
}

// mountsUnder lists mount points below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 5 {
			continue
		}
		mp := loop.UnescapeMount(fs[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

func mountDev(mp string) (uint64, bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 5 || loop.UnescapeMount(fs[4]) != mp {
			continue
		}
		var maj, mnr uint32
		if _, err := fmt.Sscanf(fs[2], "%d:%d", &maj, &mnr); err == nil {
			return unix.Mkdev(maj, mnr), true
		}
	}
	return 0, false
}
