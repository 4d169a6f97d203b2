package loop

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestValidBlockSize(t *testing.T) {
	for size, want := range map[int]bool{512: true, 1024: true, 2048: true, 4096: true, 128: false, 513: false, 8192: os.Getpagesize() >= 8192, 1 << 20: false} {
		if got := ValidBlockSize(size); got != want {
			t.Errorf("ValidBlockSize(%d) = %v", size, got)
		}
	}
}

func TestAttachRelease(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("loop tests need root (CI runs as root)")
	}
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Attach(f, Options{BlockSize: 4096, DirectIO: true})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release(time.Second)
	if !Bound(d.Num) || BackingFile(d.Num) != path {
		t.Fatalf("%s not bound to %s (%q)", d.Path, path, BackingFile(d.Num))
	}
	dev, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := unix.IoctlGetInt(int(dev.Fd()), unix.BLKSSZGET)
	dev.Close()
	if err != nil || ss != 4096 {
		t.Errorf("logical block size %d, %v; want 4096", ss, err)
	}
	if why := d.Users(); len(why) != 0 {
		t.Errorf("unused device reported busy: %v", why)
	}
	if freed, err := d.Release(5 * time.Second); err != nil || !freed {
		t.Fatalf("Release = %v, %v", freed, err)
	}
	if Bound(d.Num) {
		t.Error("device still bound after Release")
	}
	if _, err := Attach(f, Options{BlockSize: 8192 * 2}); err == nil {
		t.Error("block size 16384 accepted")
	}
}
