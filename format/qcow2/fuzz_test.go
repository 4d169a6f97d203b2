package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"vdisk/block"
)

// memFile is a block.File over a byte slice that refuses to grow past a
// bound, so a fuzzed image cannot make the test allocate without limit.
type memFile struct {
	mu sync.Mutex
	b  []byte
}

const memFileMax = 64 << 20

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > memFileMax {
		return 0, errors.New("write beyond the test file limit")
	}
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) Size() (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.b)), nil
}

func (m *memFile) Truncate(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < 0 || size > memFileMax {
		return errors.New("truncate beyond the test file limit")
	}
	if size < int64(len(m.b)) {
		m.b = m.b[:size]
	} else {
		m.b = append(m.b, make([]byte, size-int64(len(m.b)))...)
	}
	return nil
}

func (m *memFile) Sync() error  { return nil }
func (m *memFile) Name() string { return "fuzz.qcow2" }
func (m *memFile) Close() error { return nil }

func seedImages(f *testing.F) {
	names, _ := filepath.Glob("testdata/*.qcow2")
	if len(names) == 0 {
		f.Fatal("no seed images in testdata/")
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzHeader: header parsing never panics and accepts only headers whose
// tables lie inside the file.
func FuzzHeader(f *testing.F) {
	seedImages(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<maxClusterBits {
			b = b[:1<<maxClusterBits]
		}
		h, err := parseHeader(b, int64(len(b)))
		if err != nil {
			return
		}
		cs := uint64(1) << h.clusterBits
		if h.l1Size > 0 && h.l1Offset+uint64(h.l1Size)*8 > uint64(len(b)) {
			t.Fatalf("L1 table outside the file accepted")
		}
		if h.reftableOffset+uint64(h.reftableClusters)*cs > uint64(len(b)) {
			t.Fatalf("refcount table outside the file accepted")
		}
		if _, err := h.encode(int(cs)); err != nil && len(h.backingFile) <= maxBackingName {
			_ = err // extensions that filled the first cluster may not fit again: fine
		}
	})
}

// FuzzOpenRead: opening a mutated image and using it never panics, hangs
// or allocates without bound; errors are fine.
func FuzzOpenRead(f *testing.F) {
	seedImages(f)
	defer func(o func(string, block.OpenFlags) (block.File, error)) { openDataFileFunc = o }(openDataFileFunc)
	openDataFileFunc = func(string, block.OpenFlags) (block.File, error) {
		return &memFile{b: make([]byte, 1<<20)}, nil
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4<<20 {
			return
		}
		if d := os.Getenv("QCOW2_FUZZ_SLOW"); d != "" {
			// Debug aid: keep inputs that take long.
			start := time.Now()
			defer func() {
				if el := time.Since(start); el > 500*time.Millisecond {
					os.WriteFile(filepath.Join(d, fmt.Sprintf("%d-%d", os.Getpid(), el.Milliseconds())), b, 0o644)
				}
			}()
		}
		// Read-only: read, map, check.
		img, err := open(&memFile{b: append([]byte(nil), b...)}, &block.OpenOptions{ReadOnly: true, NoBacking: true}, 1<<20, 1<<20)
		if err == nil {
			size := img.Size()
			buf := make([]byte, min(size, 256<<10))
			img.ReadAt(buf, 0)
			if size > 4096 {
				img.ReadAt(buf[:4096], size-4096)
				img.ReadAt(buf[:4096], size/2&^511)
			}
			img.BlockStatus(0, size)
			img.Check(block.RepairNone)
			img.Info()
			img.Close()
		}
		// A repairing check's open, which tolerates a damaged snapshot
		// table, and its repair.
		img, err = open(&memFile{b: append([]byte(nil), b...)}, &block.OpenOptions{NoBacking: true, Check: true}, 1<<20, 1<<20)
		if err == nil {
			img.Check(block.RepairAll)
			img.Close()
		}
		// Read-write: a write, a discard, a flush, a repair.
		img, err = open(&memFile{b: append([]byte(nil), b...)}, &block.OpenOptions{NoBacking: true}, 1<<20, 1<<20)
		if err != nil {
			return
		}
		size := img.Size()
		if size > 0 {
			p := make([]byte, min(size, 5000))
			img.WriteAt(p, 0)
			img.Discard(0, size)
			img.WriteAt(p[:min(int64(len(p)), 512)], size-min(int64(len(p)), 512))
		}
		img.Flush()
		img.Check(block.RepairAll)
		img.Close()
	})
}
