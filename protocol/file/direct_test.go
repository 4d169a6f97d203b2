package file_test

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/block"
	"vdisk/protocol/file"
)

// cachedBytes is how much of the file sits in the page cache.
func cachedBytes(t *testing.T, name string) int {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() == 0 {
		return 0
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		if v&1 != 0 {
			n += page
		}
	}
	return n
}

// dropCache evicts the file's clean pages.
func dropCache(t *testing.T, name string) {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unix.Fdatasync(int(f.Fd()))
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// With NoCache, aligned reads and writes (whatever the alignment of the
// caller's memory) bypass the page cache; unaligned ones are buffered; a
// mix of both reads back what was written, at the end of the file too.
func TestNoCache(t *testing.T) {
	name := filepath.Join(t.TempDir(), "d.img")
	const size = 8 << 20
	if err := os.WriteFile(name, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	dropCache(t, name)
	f, err := file.Open(name, block.OpenFlags{NoCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, size)
	rng := rand.New(rand.NewSource(1))
	write := func(off, n, memOff int) {
		t.Helper()
		buf := make([]byte, n+memOff)[memOff:]
		rng.Read(buf)
		if w, err := f.WriteAt(buf, int64(off)); err != nil || w != n {
			t.Fatalf("write %d at %d: %d, %v", n, off, w, err)
		}
		copy(want[off:], buf)
	}
	write(0, 1<<20, 0)           // aligned
	write(1<<20, 3<<20+4096, 80) // aligned, memory not (as FUSE hands it), over a bounce chunk
	write(5<<20, 64<<10, 0)
	if n := cachedBytes(t, name); n != 0 {
		t.Errorf("%d bytes cached after aligned writes", n)
	}
	write(6<<20+100, 1000, 0) // unaligned: buffered
	write(6<<20, 4096, 3)     // direct over the cached page: the kernel keeps them coherent
	write(size-512, 512, 0)   // the last sector
	got := make([]byte, size)
	for _, memOff := range []int{0, 80} {
		buf := make([]byte, size+memOff)[memOff:]
		if n, err := f.ReadAt(buf, 0); err != nil || n != size {
			t.Fatalf("read: %d, %v", n, err)
		}
		copy(got, buf)
		if !bytes.Equal(got, want) {
			t.Fatalf("read back differs (memory offset %d)", memOff)
		}
	}
	if n := cachedBytes(t, name); n > 8192 {
		t.Errorf("%d bytes cached after aligned reads", n)
	}
	// Reads past the end are short, as for os.File.
	buf := make([]byte, 8192)
	if n, err := f.ReadAt(buf, size-4096); n != 4096 || err != io.EOF {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	// Concurrent aligned writers and readers.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i)}, 64<<10)
			off := int64(i) << 20
			for range 20 {
				if _, err := f.WriteAt(p, off); err != nil {
					t.Error(err)
					return
				}
				q := make([]byte, len(p))
				if _, err := f.ReadAt(q, off); err != nil || !bytes.Equal(p, q) {
					t.Errorf("concurrent read back at %d: %v", off, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Without NoCache, I/O is buffered as before.
func TestCacheByDefault(t *testing.T) {
	name := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(name, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dropCache(t, name)
	f, err := file.Open(name, block.OpenFlags{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if n := cachedBytes(t, name); n < 1<<20 {
		t.Errorf("buffered read left %d bytes cached", n)
	}
}
