package fuse

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"vdisk/block"
	"vdisk/format/mem"
	"vdisk/format/raw"
	"vdisk/protocol/file"
)

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("FUSE tests need root (CI runs as root)")
	}
}

func mount(t *testing.T, img block.Image, opts Options) *Export {
	t.Helper()
	needFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o700)
	e, err := Mount(img, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Unmount(true) })
	return e
}

func TestReadWriteFlushDiscard(t *testing.T) {
	img := mem.New(8 << 20)
	e := mount(t, img, Options{Unit: "t"})
	f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, _ := f.Stat(); st.Size() != 8<<20 {
		t.Fatalf("file size %d", st.Size())
	}
	// Many writers at once, 1 MiB each, as the loop device sends them.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(i + 1)}, 1<<20)
			if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := make([]byte, 1<<20)
	for i := range 8 {
		if _, err := img.ReadAt(got, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, 1<<20)) {
			t.Fatalf("MiB %d did not reach the image", i)
		}
	}
	if n := e.Stats.WriteBytes.Load(); n != 8<<20 {
		t.Errorf("bytes written counter %d", n)
	}
	// Each 1 MiB write arrives in one piece.
	if n := e.Stats.Writes.Load(); n != 8 {
		t.Errorf("8 writes of 1 MiB arrived as %d requests", n)
	}
	reads := e.Stats.Reads.Load()
	if _, err := f.ReadAt(got, 2<<20); err != nil {
		t.Fatal(err)
	}
	if n := e.Stats.Reads.Load() - reads; n != 1 {
		t.Errorf("a read of 1 MiB arrived as %d requests", n)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if e.Stats.Flushes.Load() == 0 {
		t.Error("fsync did not reach Flush")
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !block.IsZero(got) || e.Stats.Discards.Load() != 1 {
		t.Error("punched range does not read as zeros or was not counted")
	}
	// Reads past the end are short, writes past it fail.
	if n, _ := f.ReadAt(got, 8<<20-4096); n != 4096 {
		t.Errorf("read at the end returned %d bytes", n)
	}
	if _, err := f.WriteAt([]byte{1}, 8<<20); err == nil {
		t.Error("write past the end succeeded")
	}
}

func TestKillFailsIO(t *testing.T) {
	for _, pt := range []bool{false, true} {
		name := "userspace"
		if pt {
			name = "passthrough"
		}
		t.Run(name, func(t *testing.T) {
			e, _, f := rawExport(t, pt, nil)
			if _, err := f.WriteAt([]byte("hello"), 0); err != nil {
				t.Fatal(err)
			}
			e.Kill()
			buf := make([]byte, 5)
			if _, err := f.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
				t.Errorf("read after Kill: %v, want EIO", err)
			}
			if _, err := f.WriteAt(buf, 0); !errors.Is(err, syscall.EIO) {
				t.Errorf("write after Kill: %v, want EIO", err)
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	img := mem.New(1 << 20)
	e := mount(t, img, Options{ReadOnly: true})
	if _, err := os.OpenFile(e.Path(), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("read-write open of a read-only export: %v, want EROFS", err)
	}
	f, err := os.Open(e.Path())
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// rawExport mounts a 1 MiB raw image file, for passthrough if pt, and
// opens the FUSE file; backing, if not nil, is offered to the kernel at
// open instead of the image file.
func rawExport(t *testing.T, pt bool, backing *os.File) (*Export, block.Image, *os.File) {
	t.Helper()
	needFUSE(t)
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, bytes.Repeat([]byte("a"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	bf, err := file.Open(path, block.OpenFlags{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := raw.Open(bf, &block.OpenOptions{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	opts := Options{backing: backing}
	if pt {
		ptf, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ptf.Close() })
		opts.Passthrough = ptf
	}
	e := mount(t, img, opts)
	f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return e, img, f
}

func TestPassthroughReported(t *testing.T) {
	e, _, f := rawExport(t, true, nil)
	if !e.Passthrough() {
		t.Fatal("kernel with FUSE passthrough: passthrough not reported")
	}
	if _, err := f.WriteAt([]byte("hello"), 4096); err != nil {
		t.Fatal(err)
	}
	if n := e.Stats.Writes.Load(); n != 0 {
		t.Errorf("a passthrough write reached the server (%d writes served)", n)
	}
}

// When the kernel refuses the backing file at open (here: a descriptor
// that is not a regular file, after the probe at mount succeeded), the
// export says so and serves the handle in userspace with direct I/O: the
// kernel keeps no page cache for it, so what the image holds is what a
// read returns.
func TestPassthroughRefusedAtOpen(t *testing.T) {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	e, img, f := rawExport(t, true, devnull)
	if e.Passthrough() {
		t.Error("passthrough reported for a handle the kernel refused")
	}
	if _, err := f.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	if e.Stats.Writes.Load() != 1 {
		t.Errorf("%d writes served, want 1", e.Stats.Writes.Load())
	}
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 0); err != nil || string(got[:6]) != "helloa" {
		t.Fatalf("read back %q, %v", got[:6], err)
	}
	if _, err := img.WriteAt([]byte("HELLO"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got, 0); err != nil || string(got[:5]) != "HELLO" {
		t.Errorf("read after the image changed: %q, %v (served from a page cache)", got[:5], err)
	}
}
