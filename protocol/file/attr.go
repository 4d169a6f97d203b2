package file

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/block"
)

// Linux's FS_NOCOW_FL and the FS_IOC_FSGETXATTR/FSSETXATTR interface,
// which x/sys/unix does not define. The ioctl numbers use the generic
// encoding (_IOR/_IOW('X', 31/32, struct fsxattr)); on the few
// architectures with another one the calls fail, which is harmless for
// hints.
const (
	fsNoCOWFlag     = 0x00800000
	fsXflagExtSize  = 0x00000800
	fsIocFSGetXattr = 2<<30 | uint(unsafe.Sizeof(fsxattr{}))<<16 | 'X'<<8 | 31
	fsIocFSSetXattr = 1<<30 | uint(unsafe.Sizeof(fsxattr{}))<<16 | 'X'<<8 | 32
)

// fsxattr is struct fsxattr of <linux/fs.h>.
type fsxattr struct {
	xflags     uint32
	extsize    uint32
	nextents   uint32
	projid     uint32
	cowextsize uint32
	pad        [8]byte
}

// SetNoCOW turns off copy-on-write for the file (FS_NOCOW_FL), as
// qemu-img's nocow=on does. Only btrfs knows the flag, and only for an
// empty file.
func (f *File) SetNoCOW() error {
	fd := int(f.f.Fd())
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return attrError(err)
	}
	return attrError(unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsNoCOWFlag)))
}

// SetExtentSizeHint asks the file system to allocate the file in extents
// of n bytes (XFS's extent size hint; 0 clears it), as qemu-img's
// extent_size_hint does.
func (f *File) SetExtentSizeHint(n uint32) error {
	fd := f.f.Fd()
	var a fsxattr
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(fsIocFSGetXattr), uintptr(unsafe.Pointer(&a))); e != 0 {
		return attrError(e)
	}
	a.xflags |= fsXflagExtSize
	a.extsize = n
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(fsIocFSSetXattr), uintptr(unsafe.Pointer(&a))); e != 0 {
		return attrError(e)
	}
	return nil
}

// extentSizeHint reads the hint back (for tests).
func (f *File) extentSizeHint() (uint32, error) {
	var a fsxattr
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.f.Fd(), uintptr(fsIocFSGetXattr), uintptr(unsafe.Pointer(&a))); e != 0 {
		return 0, attrError(e)
	}
	if a.xflags&fsXflagExtSize == 0 {
		return 0, nil
	}
	return a.extsize, nil
}

// attrError marks the errors of a file system without the attribute as
// block.ErrNotSupported, keeping their own text.
func attrError(err error) error {
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		return notSupported{err}
	}
	return err
}

type notSupported struct{ error }

func (e notSupported) Is(target error) bool { return target == block.ErrNotSupported }
func (e notSupported) Unwrap() error        { return e.error }

var _ block.CreateHinter = (*File)(nil)
