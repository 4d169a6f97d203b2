// Package loop sets up Linux loop devices over a file with the
// LOOP_CONFIGURE ioctl, and answers whether a loop device is in use.
//
// vdisk binds every loop device with LO_FLAGS_AUTOCLEAR and keeps its own
// descriptor open for as long as the unit lives, so the kernel releases the
// device by itself when the daemon dies: a crashed daemon never leaves a
// bound loop device that blocks a later attach.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options configure a loop device.
type Options struct {
	ReadOnly bool
	// BlockSize is the logical block size presented to the kernel: a power
	// of two from 512 to what the kernel's loop driver accepts (the page
	// size, or 64 KiB on kernels with large block sizes). 0 means 512.
	BlockSize int
	// DirectIO asks the loop driver to bypass the page cache of the backing
	// file, so data is cached once (in the loop device's own cache).
	DirectIO bool
}

// Device is a bound loop device held open by this process.
type Device struct {
	Num  int
	Path string // /dev/loopN
	Rdev uint64
	// DirectIO reports whether the kernel accepted direct I/O.
	DirectIO bool
	// base is the kernel's I/O statistics at attach: they live as long as
	// the loop device, across bindings.
	base IOStat
	f    *os.File
	// nodes are partition device nodes we made, removed at release:
	// partition device numbers are dynamic, and a stale node could later
	// name another disk's partition.
	nodes []string
}

// ValidBlockSize reports whether size could be a logical block size: a
// power of two of at least 512 bytes. Which ones the loop driver can
// present depends on the kernel; LOOP_CONFIGURE says (ErrBlockSize).
func ValidBlockSize(size int) bool {
	return size >= 512 && size <= 1<<30 && size&(size-1) == 0
}

// ErrBlockSize is returned by Attach when the kernel's loop driver cannot
// present the logical block size asked for.
var ErrBlockSize = errors.New("the loop driver cannot present this logical block size")

// Attach binds a free loop device to backing. The device keeps its own
// reference to backing; the caller may close it afterwards.
func Attach(backing *os.File, opts Options) (*Device, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = 512
	}
	if !ValidBlockSize(bs) {
		return nil, fmt.Errorf("loop: logical block size %d: %w", bs, ErrBlockSize)
	}
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()
	// Another process may grab the device GET_FREE returned before we bind
	// it; LOOP_CONFIGURE then fails with EBUSY and we ask again.
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		num, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop: LOOP_CTL_GET_FREE: %w", err)
		}
		d, err := configure(num, backing, opts, bs)
		if errors.Is(err, unix.EBUSY) {
			lastErr = err
			time.Sleep(time.Duration(attempt+1) * time.Millisecond)
			continue
		}
		return d, err
	}
	return nil, fmt.Errorf("loop: no free loop device: %w", lastErr)
}

func configure(num int, backing *os.File, opts Options, bs int) (*Device, error) {
	path := fmt.Sprintf("/dev/loop%d", num)
	mode := os.O_RDWR
	if opts.ReadOnly {
		mode = os.O_RDONLY
	}
	f, err := openDev(path, mode)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Size: uint32(bs)}
	// Partition tables on the image show up as loopNpM, as on a disk.
	cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR | unix.LO_FLAGS_PARTSCAN
	if opts.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	name := backing.Name()
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], name)
	dio := opts.DirectIO
	if dio {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
	if err != nil && dio && errors.Is(err, unix.EINVAL) {
		// Kernels that cannot do direct I/O on this backing file refuse
		// the flag; buffered I/O still works.
		cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
		err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EBUSY) {
			return nil, err
		}
		if errors.Is(err, unix.EINVAL) && bs != 512 {
			// The one argument a kernel may refuse that 512 never is.
			return nil, fmt.Errorf("loop: logical block size %d: %w (LOOP_CONFIGURE: %w)", bs, ErrBlockSize, err)
		}
		return nil, fmt.Errorf("loop: LOOP_CONFIGURE %s: %w", path, err)
	}
	if err := initBlockSize(f, bs); err != nil && bs > os.Getpagesize() {
		unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		f.Close()
		return nil, fmt.Errorf("loop: %s: setting the block size of its page cache: %w", path, err)
	}
	d := &Device{Num: num, Path: path, f: f}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil {
		d.Rdev = st.Rdev
	}
	if info, err := unix.IoctlLoopGetStatus64(int(f.Fd())); err == nil {
		d.DirectIO = info.Flags&unix.LO_FLAGS_DIRECT_IO != 0
	}
	d.base, _ = readIOStat(d.Name())
	return d, nil
}

// IOStat counts completed requests and bytes, as the block layer does.
type IOStat struct {
	Reads, Writes         uint64
	ReadBytes, WriteBytes uint64
}

// IOStat is the I/O the device completed since it was attached, from
// /sys/block/loopN/stat (whose counts include the partitions').
func (d *Device) IOStat() (IOStat, error) {
	now, err := readIOStat(d.Name())
	if err != nil {
		return IOStat{}, err
	}
	return IOStat{
		Reads: now.Reads - d.base.Reads, Writes: now.Writes - d.base.Writes,
		ReadBytes: now.ReadBytes - d.base.ReadBytes, WriteBytes: now.WriteBytes - d.base.WriteBytes,
	}, nil
}

func readIOStat(name string) (IOStat, error) {
	b, err := os.ReadFile(filepath.Join(sysBlock, name, "stat"))
	if err != nil {
		return IOStat{}, err
	}
	// Documentation/block/stat.rst: reads, merges, sectors, ticks, then
	// the same for writes; sectors are 512 bytes whatever the block size.
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return IOStat{}, fmt.Errorf("loop: %s/stat: %d fields", name, len(f))
	}
	var v [7]uint64
	for _, i := range []int{0, 2, 4, 6} {
		if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
			return IOStat{}, fmt.Errorf("loop: %s/stat: %w", name, err)
		}
	}
	return IOStat{Reads: v[0], ReadBytes: v[2] * 512, Writes: v[4], WriteBytes: v[6] * 512}, nil
}

// initBlockSize gives the device's page cache the block size a first open
// would give it. The kernel sets it from the logical block size only when
// nobody has the device open, and ours was open across LOOP_CONFIGURE, so
// the page cache keeps the block size of the device's previous binding:
// with sectors larger than a page it then reads and writes pieces smaller
// than a sector, which fail with EIO.
func initBlockSize(f *os.File, lbs int) error {
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return fmt.Errorf("BLKGETSIZE64: %w", errno)
	}
	// As the kernel's set_init_blocksize: the logical block size, doubled
	// up to the page size while the device size allows.
	bs := lbs
	for bs < os.Getpagesize() && size&uint64(bs) == 0 {
		bs <<= 1
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKBSZSET, bs); err != nil {
		return fmt.Errorf("BLKBSZSET %d: %w", bs, err)
	}
	return nil
}

// openDev opens a loop device node, creating it when udev has not (in
// containers /dev may lack nodes for devices loop-control just made).
func openDev(path string, mode int) (*os.File, error) {
	f, err := os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		num, _ := strconv.Atoi(strings.TrimPrefix(path, "/dev/loop"))
		if merr := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(num)))); merr == nil || errors.Is(merr, os.ErrExist) {
			f, err = os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
		}
	}
	return f, err
}

// Name is loopN, the device's name in /sys/block.
func (d *Device) Name() string { return fmt.Sprintf("loop%d", d.Num) }

// Release unbinds the device: LOOP_CLR_FD marks it for autoclear and the
// close of our descriptor, the last one when nobody else holds the device,
// clears it. When others still hold it (a forced detach of a busy device),
// the kernel clears it when they let go. Release waits up to timeout for
// the device to become free and reports whether it did.
func (d *Device) Release(timeout time.Duration) (bool, error) {
	if d.f == nil {
		return true, nil
	}
	err := unix.IoctlSetInt(int(d.f.Fd()), unix.LOOP_CLR_FD, 0)
	if errors.Is(err, unix.ENXIO) {
		err = nil // already cleared
	}
	d.f.Close()
	d.f = nil
	d.removeNodes()
	if err != nil {
		return false, fmt.Errorf("loop: LOOP_CLR_FD %s: %w", d.Path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if !Bound(d.Num) {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Close drops our descriptor without clearing; autoclear does the rest.
func (d *Device) Close() {
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
	d.removeNodes()
}

func (d *Device) removeNodes() {
	for _, n := range d.nodes {
		os.Remove(n)
	}
	d.nodes = nil
}

// Bound reports whether loopN has a backing file.
func Bound(num int) bool {
	_, err := os.Stat(fmt.Sprintf("/sys/block/loop%d/loop/backing_file", num))
	return err == nil
}

// BackingFile is the backing file the kernel reports for loopN, or "".
func BackingFile(num int) string {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/loop/backing_file", num))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ClearStale clears loopN if it is bound and nobody uses it.
func ClearStale(num int) error {
	f, err := os.OpenFile(fmt.Sprintf("/dev/loop%d", num), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	if errors.Is(err, unix.ENXIO) {
		return nil
	}
	return err
}

// Users explains why the device is in use, or returns nil when it is not:
// a file system mounted on it or on a partition, swap, another block
// device stacked on it (holders, or a loop device backed by it), or a
// process other than self holding it open.
func (d *Device) Users() []string {
	return Users(d.Name(), d.Rdev)
}

// sysBlock is where the kernel lists block devices; tests point it at a
// fake tree.
var sysBlock = "/sys/block"

// Users is Device.Users for a device named name (loopN) with device
// number rdev.
//
// The kernel's own users (a mounted file system, swap, device mapper, md)
// claim the device exclusively, so an O_EXCL open fails with EBUSY while
// any of them holds it or a partition of it, even one that no scan of
// this process's view finds (a mount in another namespace). The scans
// run only to name the user, or, when nothing claims the device, to find
// what claims do not show: processes holding it open and loop devices
// backed by it.
func Users(name string, rdev uint64) []string {
	devs := map[uint64]string{rdev: name}
	parts, _ := filepath.Glob(filepath.Join(sysBlock, name, name+"p*"))
	for _, p := range parts {
		if dn, err := ReadDevNum(filepath.Join(p, "dev")); err == nil {
			devs[dn] = filepath.Base(p)
		}
	}
	claimed, probed := probeClaimed(name, rdev)
	var why []string
	if claimed || !probed {
		why = kernelUsers(name, parts, devs)
	}
	why = append(why, loopsBackedBy(devs)...)
	if len(why) == 0 {
		why = openers(devs)
	}
	if len(why) == 0 && claimed {
		why = append(why, name+" is claimed by the kernel (a file system mounted in another namespace, swap or a stacked device)")
	}
	return why
}

// probeClaimed opens the device with O_EXCL, which fails with EBUSY while
// anything claims it. probed is false when the probe could not be made
// (no device node, or one that is not this device).
func probeClaimed(name string, rdev uint64) (claimed, probed bool) {
	path := "/dev/" + name
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != rdev {
		return false, false
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == nil {
		unix.Close(fd)
		return false, true
	}
	return errors.Is(err, unix.EBUSY), errors.Is(err, unix.EBUSY)
}

// kernelUsers names the claims on the device: holders, mounts, swap.
func kernelUsers(name string, parts []string, devs map[uint64]string) []string {
	var why []string
	// Stacked block devices (device mapper, md) appear as holders.
	for _, dir := range append([]string{filepath.Join(sysBlock, name)}, parts...) {
		hs, _ := os.ReadDir(filepath.Join(dir, "holders"))
		for _, h := range hs {
			why = append(why, fmt.Sprintf("%s is held by %s", filepath.Base(dir), h.Name()))
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			fs := strings.Fields(line)
			if len(fs) < 5 {
				continue
			}
			var maj, mnr uint32
			if _, err := fmt.Sscanf(fs[2], "%d:%d", &maj, &mnr); err != nil {
				continue
			}
			if n, ok := devs[unix.Mkdev(maj, mnr)]; ok {
				why = append(why, fmt.Sprintf("%s is mounted on %s", n, UnescapeMount(fs[4])))
			}
		}
	}
	if sw, err := os.ReadFile("/proc/swaps"); err == nil {
		for _, line := range strings.Split(string(sw), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 2 || fs[1] != "partition" {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(UnescapeMount(fs[0]), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
				continue
			}
			if n, ok := devs[st.Rdev]; ok {
				why = append(why, n+" is in use as swap")
			}
		}
	}
	return why
}

// loopsBackedBy names loop devices whose backing file is the device or a
// partition of it: they hold it with neither a claim nor a descriptor.
func loopsBackedBy(devs map[uint64]string) []string {
	var why []string
	bfs, _ := filepath.Glob(filepath.Join(sysBlock, "loop*", "loop", "backing_file"))
	for _, bf := range bfs {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue
		}
		back := strings.TrimSpace(string(b))
		for _, n := range devs {
			if back == "/dev/"+n {
				why = append(why, fmt.Sprintf("%s is the backing file of %s", n, filepath.Base(filepath.Dir(filepath.Dir(bf)))))
			}
		}
	}
	return why
}

// openers names processes other than this one with the device or a
// partition open, through whatever node: a node outside /dev names the
// same device.
func openers(devs map[uint64]string) []string {
	var why []string
	self := os.Getpid()
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			link := filepath.Join("/proc", p.Name(), "fd", fd.Name())
			// Sockets, pipes and anonymous inodes have no path.
			if target, err := os.Readlink(link); err != nil || !strings.HasPrefix(target, "/") {
				continue
			}
			// Cached attributes do: a file on a FUSE file system whose
			// server hangs must not hang the scan.
			var stx unix.Statx_t
			if unix.Statx(unix.AT_FDCWD, link, unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &stx) != nil ||
				stx.Mode&unix.S_IFMT != unix.S_IFBLK {
				continue
			}
			if n, ok := devs[unix.Mkdev(stx.Rdev_major, stx.Rdev_minor)]; ok {
				comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				why = append(why, fmt.Sprintf("%s is open by process %d (%s)", n, pid, strings.TrimSpace(string(comm))))
				break
			}
		}
	}
	return why
}

// ReadDevNum reads a sysfs "dev" file (MAJ:MIN) as a device number.
func ReadDevNum(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var maj, mnr uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &mnr); err != nil {
		return 0, err
	}
	return unix.Mkdev(maj, mnr), nil
}

// UnescapeMount undoes mountinfo's octal escapes (\040 for a space).
func UnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Partitions lists the numbers of the partitions the kernel has for the
// device, in order.
func (d *Device) Partitions() []int {
	name := d.Name()
	paths, _ := filepath.Glob(filepath.Join("/sys/block", name, name+"p*"))
	var nums []int
	for _, p := range paths {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), name+"p")); err == nil {
			nums = append(nums, n)
		}
	}
	sort.Ints(nums)
	return nums
}

// AddPartition registers partition num over [start, start+length) bytes of
// the device with BLKPG, as partx -a does: on kernels without partition
// table parsers, nothing else makes partitions appear. The device node is
// made when /dev is not a devtmpfs that makes it.
func (d *Device) AddPartition(num int, start, length int64) error {
	if err := d.blkpg(unix.BLKPG_ADD_PARTITION, num, start, length); err != nil {
		return fmt.Errorf("loop: adding partition %d of %s (%d bytes at %d): %w", num, d.Path, length, start, err)
	}
	part := fmt.Sprintf("%sp%d", d.Name(), num)
	node := "/dev/" + part
	if _, err := os.Stat(node); errors.Is(err, os.ErrNotExist) {
		if dev, err := ReadDevNum(filepath.Join("/sys/block", d.Name(), part, "dev")); err == nil {
			if unix.Mknod(node, unix.S_IFBLK|0o660, int(dev)) == nil {
				d.nodes = append(d.nodes, node)
			}
		}
	}
	return nil
}

// DelPartition removes partition num with BLKPG; the kernel refuses
// (EBUSY) while the partition is open or mounted.
func (d *Device) DelPartition(num int) error {
	if err := d.blkpg(unix.BLKPG_DEL_PARTITION, num, 0, 0); err != nil {
		return fmt.Errorf("loop: removing partition %d of %s: %w", num, d.Path, err)
	}
	node := fmt.Sprintf("/dev/%sp%d", d.Name(), num)
	for i, n := range d.nodes {
		if n == node {
			os.Remove(n)
			d.nodes = append(d.nodes[:i], d.nodes[i+1:]...)
			break
		}
	}
	return nil
}

// PartitionExtent is where the kernel has partition num: start and length
// in bytes.
func (d *Device) PartitionExtent(num int) (start, length int64, err error) {
	dir := filepath.Join("/sys/block", d.Name(), fmt.Sprintf("%sp%d", d.Name(), num))
	var v [2]int64
	for i, f := range []string{"start", "size"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return 0, 0, err
		}
		// sysfs counts 512-byte sectors whatever the logical block size.
		if v[i], err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return 0, 0, err
		}
	}
	return v[0] * 512, v[1] * 512, nil
}

func (d *Device) blkpg(op int32, num int, start, length int64) error {
	if d.f == nil {
		return fmt.Errorf("%s is released", d.Path)
	}
	p := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(num)}
	arg := unix.BlkpgIoctlArg{
		Op:      op,
		Datalen: int32(unsafe.Sizeof(p)),
		Data:    (*byte)(unsafe.Pointer(&p)),
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg)))
	runtime.KeepAlive(&p)
	if errno != 0 {
		return errno
	}
	return nil
}

// Sync writes back the device's page cache (what processes wrote to the
// device node without O_DIRECT), waiting at most timeout.
func (d *Device) Sync(timeout time.Duration) {
	f := d.f
	if f == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		// os.File holds the descriptor open until Sync returns, even if
		// Release closes it meanwhile.
		f.Sync()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}
