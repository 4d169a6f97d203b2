package imgtool

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// writeback starts the kernel writing a convert target's dirty pages while
// the copy is still running. A durable convert ends with one flush, and
// with gigabytes in the page cache that flush would otherwise do all the
// disk I/O after the copy; started early, the I/O overlaps the copy. It
// only starts writeback (SYNC_FILE_RANGE_WRITE), never waits for it, so
// ordering and durability still come from the image's own flush.
type writeback struct {
	f    *os.File
	kick chan struct{}
	done chan struct{}
	once sync.Once
}

// newWriteback watches the local file name; nil if it cannot be opened
// (the hint is only an optimisation).
func newWriteback(name string) *writeback {
	// sync_file_range acts on the inode's page cache, so a read-only
	// descriptor of our own serves, whatever the image driver holds.
	f, err := os.Open(name)
	if err != nil {
		return nil
	}
	w := &writeback{f: f, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		fd := int(f.Fd())
		for range w.kick {
			// An error only means no early writeback; the flush
			// reports real I/O errors.
			_ = unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		}
	}()
	return w
}

// start asks for writeback without blocking the caller; a request still
// pending covers this one.
func (w *writeback) start() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *writeback) close() {
	w.once.Do(func() {
		close(w.kick)
		<-w.done
		w.f.Close()
	})
}
