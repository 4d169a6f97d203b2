// Package ctl is the control protocol of the vdisk attach daemon and its
// Go client: the ioctl interface of a kernel disk driver (attach, detach,
// fname, stat) as JSON requests over a Unix socket.
//
// Protocol, version 1. The daemon listens on STATE_DIR/daemon.sock (mode
// 0600 in a 0700 directory) and accepts only peers that are root or the
// daemon's own user (SO_PEERCRED). A client connects, writes one JSON
// request object followed by a newline, reads one JSON response object and
// closes the connection.
//
//	request:  {"version":1, "op":"attach"|"detach"|"list"|"stat"|"rescan"|"ping", ...}
//	response: {"version":1, "ok":true, ...} or
//	          {"version":1, "ok":false, "errno":"EBUSY", "error":"..."}
//
// A daemon answers a request whose version it does not speak with errno
// EPROTO. Fields are those of Request and Response below; unknown fields
// are ignored, so later versions may add fields freely.
package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Version is the protocol version this package speaks.
const Version = 1

// Names in the state directory.
const (
	SocketName = "daemon.sock"
	PIDName    = "daemon.pid"
	LockName   = "daemon.lock"
	LogName    = "daemon.log"
	StateName  = "state.json"
	FUSEDir    = "fuse"
)

// DefaultStateDir is where the daemon lives unless --state-dir or
// VDISK_STATE_DIR say otherwise.
const DefaultStateDir = "/run/vdisk"

// StateDir resolves the state directory: the flag if set, else
// $VDISK_STATE_DIR, else DefaultStateDir.
func StateDir(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("VDISK_STATE_DIR"); env != "" {
		return env
	}
	return DefaultStateDir
}

// Operations.
const (
	OpAttach = "attach"
	OpDetach = "detach"
	OpList   = "list"
	OpStat   = "stat"
	OpPing   = "ping"
	// OpRescan re-reads a unit's partition table and makes the kernel's
	// partitions match it (BLKPG), for kernels that parse no tables.
	OpRescan = "rescan"
)

// Request is one control request.
type Request struct {
	Version int    `json:"version"`
	Op      string `json:"op"`
	// Unit names a unit (vd0, 0) or its device (/dev/loop3) for detach, rescan and
	// stat.
	Unit string `json:"unit,omitempty"`
	// Force detaches a device that is in use.
	Force  bool        `json:"force,omitempty"`
	Attach *AttachArgs `json:"attach,omitempty"`
}

// AttachArgs are the arguments of attach.
type AttachArgs struct {
	// File is the image name exactly as the user gave it; Dir is the
	// client's working directory, against which a relative File is opened.
	File string `json:"file,omitempty"`
	Dir  string `json:"dir,omitempty"`
	// Format names the format; empty probes.
	Format   string `json:"format,omitempty"`
	ReadOnly bool   `json:"read-only,omitempty"`
	// SecBits is log2 of the logical sector size; 0 means 9.
	SecBits int `json:"secbits,omitempty"`
	// Unit asks for a particular unit (vdN or N); empty picks the first free.
	Unit      string `json:"unit,omitempty"`
	CacheSize int64  `json:"cache-size,omitempty"`
	// L2CacheSize and RefcountCacheSize size a qcow2 image's metadata
	// caches (block.OpenOptions); 0 keeps the defaults.
	L2CacheSize       int64 `json:"l2-cache-size,omitempty"`
	RefcountCacheSize int64 `json:"refcount-cache-size,omitempty"`
	// MemSize, when positive, attaches a RAM disk of that many bytes
	// instead of a file.
	MemSize int64 `json:"mem-size,omitempty"`
	// NoPassthrough serves every request in userspace even for raw images.
	NoPassthrough bool `json:"no-passthrough,omitempty"`
}

// Response answers a request.
type Response struct {
	Version int    `json:"version"`
	OK      bool   `json:"ok"`
	Errno   string `json:"errno,omitempty"`
	Error   string `json:"error,omitempty"`
	// Unit is the unit attach made or detach removed.
	Unit  *UnitInfo  `json:"unit,omitempty"`
	Units []UnitInfo `json:"units,omitempty"`
	Stat  *FileStat  `json:"stat,omitempty"`
	// Partitions are the unit's partitions after a rescan.
	Partitions []Partition `json:"partitions,omitempty"`
}

// Partition is a partition of a unit's device, in bytes.
type Partition struct {
	Device string `json:"device"`
	Number int    `json:"number"`
	Start  int64  `json:"start"`
	Size   int64  `json:"size"`
}

// UnitInfo describes an attached unit (the FNAME ioctl and more).
type UnitInfo struct {
	Unit   string `json:"unit"`
	Device string `json:"device"`
	// File is the image name exactly as given at attach.
	File        string   `json:"file"`
	Format      string   `json:"format"`
	ReadOnly    bool     `json:"read-only"`
	SectorSize  int      `json:"sector-size"`
	VirtualSize int64    `json:"virtual-size"`
	Passthrough bool     `json:"passthrough"`
	DirectIO    bool     `json:"direct-io"`
	Counters    Counters `json:"counters"`
}

// Counters count the requests a unit served.
type Counters struct {
	Reads        uint64 `json:"reads"`
	Writes       uint64 `json:"writes"`
	BytesRead    uint64 `json:"bytes-read"`
	BytesWritten uint64 `json:"bytes-written"`
	Flushes      uint64 `json:"flushes"`
	Discards     uint64 `json:"discards"`
	Errors       uint64 `json:"errors"`
}

// FileStat is the fstat(2) of a unit's image file (the STAT ioctl).
type FileStat struct {
	Name    string `json:"name"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Mode    uint32 `json:"mode"`
	Nlink   uint64 `json:"nlink"`
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
	Rdev    uint64 `json:"rdev"`
	Size    int64  `json:"size"`
	Blksize int64  `json:"blksize"`
	Blocks  int64  `json:"blocks"`
	// Times as seconds and nanoseconds since the epoch.
	Atime Timespec `json:"atime"`
	Mtime Timespec `json:"mtime"`
	Ctime Timespec `json:"ctime"`
}

// Timespec is a struct timespec.
type Timespec struct {
	Sec  int64 `json:"sec"`
	Nsec int64 `json:"nsec"`
}

// Time converts to time.Time.
func (t Timespec) Time() time.Time { return time.Unix(t.Sec, t.Nsec) }

// Error is a failed request: the daemon's errno and message.
type Error struct {
	Errno syscall.Errno
	Msg   string
}

// Error is the daemon's message with the errno's name, as in
// "vd3: no such unit attached (ENXIO)".
func (e *Error) Error() string {
	if e.Errno == 0 || e.Errno == syscall.EIO {
		return e.Msg
	}
	return e.Msg + " (" + ErrnoName(e.Errno) + ")"
}

// Is lets errors.Is(err, syscall.EBUSY) see the errno.
func (e *Error) Is(target error) bool {
	t, ok := target.(syscall.Errno)
	return ok && t == e.Errno
}

// errnos the protocol names. Others travel as EIO.
var errnos = map[string]syscall.Errno{
	"EPERM": syscall.EPERM, "ENOENT": syscall.ENOENT, "EIO": syscall.EIO,
	"ENXIO": syscall.ENXIO, "EACCES": syscall.EACCES, "EBUSY": syscall.EBUSY,
	"EEXIST": syscall.EEXIST, "ENODEV": syscall.ENODEV, "EINVAL": syscall.EINVAL,
	"ENOSPC": syscall.ENOSPC, "EROFS": syscall.EROFS, "EPROTO": syscall.EPROTO,
	"ENOTSUP": syscall.ENOTSUP, "ENOMEM": syscall.ENOMEM,
}

// ErrnoName is the protocol name of an errno.
func ErrnoName(e syscall.Errno) string {
	for n, v := range errnos {
		if v == e {
			return n
		}
	}
	return "EIO"
}

// ErrnoOf finds the errno an error carries, EIO if none.
func ErrnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		if _, ok := errnos[ErrnoName(e)]; ok && e != 0 {
			return e
		}
	}
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Errno
	}
	return syscall.EIO
}

// Client talks to a daemon.
type Client struct {
	StateDir string
	// Timeout bounds one request; attach and detach may take a while.
	Timeout time.Duration
}

// NewClient returns a client of the daemon in stateDir.
func NewClient(stateDir string) *Client {
	return &Client{StateDir: stateDir, Timeout: 2 * time.Minute}
}

// SocketPath is the daemon's socket.
func (c *Client) SocketPath() string { return filepath.Join(c.StateDir, SocketName) }

// ErrNoDaemon is returned when no daemon listens on the socket.
var ErrNoDaemon = errors.New("no vdisk daemon is running")

// Do sends one request and returns the response; a failed request is an *Error.
func (c *Client) Do(req *Request) (*Response, error) {
	req.Version = Version
	conn, err := net.DialTimeout("unix", c.SocketPath(), 5*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (state directory %s)", ErrNoDaemon, c.StateDir)
		}
		return nil, fmt.Errorf("connecting to the daemon: %w", err)
	}
	defer conn.Close()
	if c.Timeout > 0 {
		conn.SetDeadline(time.Now().Add(c.Timeout))
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	_, werr := conn.Write(append(b, '\n'))
	// A daemon that refuses a peer answers at once and closes; its answer
	// is still readable after our write failed, and says more than EPIPE.
	var resp Response
	dec := json.NewDecoder(bufio.NewReader(conn))
	if err := dec.Decode(&resp); err != nil {
		if werr != nil {
			return nil, fmt.Errorf("sending request: %w", werr)
		}
		return nil, fmt.Errorf("reading the daemon's response: %w", err)
	}
	if !resp.OK {
		e, ok := errnos[resp.Errno]
		if !ok {
			e = syscall.EIO
		}
		return &resp, &Error{Errno: e, Msg: resp.Error}
	}
	return &resp, nil
}

// Ping checks that a daemon answers.
func (c *Client) Ping() error {
	_, err := c.Do(&Request{Op: OpPing})
	return err
}

// Attach attaches an image (or a RAM disk) and returns the new unit.
func (c *Client) Attach(args AttachArgs) (*UnitInfo, error) {
	resp, err := c.Do(&Request{Op: OpAttach, Attach: &args})
	if err != nil {
		return nil, err
	}
	return resp.Unit, nil
}

// Detach detaches a unit (vdN) or device (/dev/loopN).
func (c *Client) Detach(unit string, force bool) (*UnitInfo, error) {
	resp, err := c.Do(&Request{Op: OpDetach, Unit: unit, Force: force})
	if err != nil {
		return nil, err
	}
	return resp.Unit, nil
}

// List returns every attached unit.
func (c *Client) List() ([]UnitInfo, error) {
	resp, err := c.Do(&Request{Op: OpList})
	if err != nil {
		return nil, err
	}
	if resp.Units == nil {
		return []UnitInfo{}, nil
	}
	return resp.Units, nil
}

// Stat returns the fstat of a unit's image file.
func (c *Client) Stat(unit string) (*FileStat, *UnitInfo, error) {
	resp, err := c.Do(&Request{Op: OpStat, Unit: unit})
	if err != nil {
		return nil, nil, err
	}
	return resp.Stat, resp.Unit, nil
}

// Rescan makes the kernel's partitions of a unit match its partition
// table and returns them.
func (c *Client) Rescan(unit string) ([]Partition, error) {
	resp, err := c.Do(&Request{Op: OpRescan, Unit: unit})
	if resp == nil {
		return nil, err
	}
	// A rescan that failed for some partitions still reports the others.
	return resp.Partitions, err
}
