package file

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// QEMU's file-posix driver advertises what each opener does and what it
// lets others do with shared OFD locks on single bytes: byte 100+i is
// held by an opener that uses permission i, byte 200+i by one that does
// not let others use it. Taking the same locks makes vdisk and QEMU
// mutually exclusive exactly where QEMU is with itself.
const (
	lockPermBase   = 100
	lockSharedBase = 200
)

// QEMU's permission bits (BLK_PERM_*), in bit order.
const (
	permConsistentRead = 1 << iota
	permWrite
	permWriteUnchanged
	permResize
	permGraphMod
	permAll = permConsistentRead | permWrite | permWriteUnchanged | permResize | permGraphMod
)

var permNames = []string{"consistent read", "write", "write unchanged", "resize", "change children"}

// lockImage applies QEMU's protocol: first take our bytes, then check
// that nobody else holds a conflicting one, and on a conflict drop ours
// again. Taking before checking is what makes two openers exclude each
// other: shared locks never conflict, so had both checked first, both
// could pass and then both lock; this way the later of the two always sees
// the earlier's bytes (both may fail, never both succeed). perm is what we
// use, shared what we allow others.
func lockImage(f *os.File, perm, shared int) error {
	fd := int(f.Fd())
	var taken []int
	take := func(b int) error {
		if err := setLock(fd, b); err != nil {
			return err
		}
		taken = append(taken, b)
		return nil
	}
	err := func() error {
		for i := range permNames {
			bit := 1 << i
			if perm&bit != 0 {
				if err := take(lockPermBase + i); err != nil {
					return err
				}
			}
			if shared&bit == 0 {
				if err := take(lockSharedBase + i); err != nil {
					return err
				}
			}
		}
		for i := range permNames {
			bit := 1 << i
			// We need bit: nobody may hold "does not share bit".
			if perm&bit != 0 {
				if held, err := othersHold(fd, lockSharedBase+i); err != nil {
					return err
				} else if held {
					return fmt.Errorf("failed to get \"%s\" lock: is another process using the image? (use -U to read anyway)", permNames[i])
				}
			}
			// We do not share bit: nobody may be using it.
			if shared&bit == 0 {
				if held, err := othersHold(fd, lockPermBase+i); err != nil {
					return err
				} else if held {
					return fmt.Errorf("failed to get shared \"%s\" lock: is another process using the image? (use -U to read anyway)", permNames[i])
				}
			}
		}
		return nil
	}()
	if err != nil {
		for _, b := range taken {
			unlock(fd, b)
		}
	}
	return err
}

func othersHold(fd, b int) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(b), Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return false, nil // file system without OFD locks: QEMU proceeds too
		}
		return false, fmt.Errorf("testing lock byte %d: %w", b, err)
	}
	return lk.Type != unix.F_UNLCK, nil
}

func setLock(fd, b int) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: int64(b), Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return nil
		}
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("failed to lock byte %d: is another process using the image? (use -U to read anyway)", b)
		}
		return fmt.Errorf("locking byte %d: %w", b, err)
	}
	return nil
}

// unlock drops our lock on byte b; an error leaves a lock that closing the
// file drops anyway.
func unlock(fd, b int) {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: int64(b), Len: 1}
	unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
}
