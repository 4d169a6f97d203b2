package loop

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestValidBlockSize(t *testing.T) {
	for size, want := range map[int]bool{512: true, 1024: true, 2048: true, 4096: true, 128: false, 513: false, 8192: true, 1 << 20: true, 1 << 31: false, 12288: false} {
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
	// The kernel decides; none presents 1 MiB blocks.
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if d, err := Attach(f, Options{BlockSize: 1 << 20, DirectIO: true}); !errors.Is(err, ErrBlockSize) {
		if err == nil {
			d.Release(time.Second)
		}
		t.Errorf("block size 1 MiB: %v, want ErrBlockSize", err)
	}
}

// The holders of the device and of its partitions (device mapper, md) and
// loop devices backed by either are named; device mapper and md are not
// in every kernel, so a fake sysfs tree stands in for them.
func TestUsersNamesStackedDevices(t *testing.T) {
	root := t.TempDir()
	old := sysBlock
	sysBlock = root
	defer func() { sysBlock = old }()
	mk := func(path, content string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if content != "" {
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		} else if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// No such node in /dev: the exclusive-open probe cannot run, so the
	// scans decide.
	const name = "vdisktest0"
	mk(name+"/holders/dm-3", "")
	mk(name+"/"+name+"p2/dev", "4095:1048001\n")
	mk(name+"/"+name+"p2/holders/md7", "")
	mk("loop9/loop/backing_file", "/dev/"+name+"p2\n")
	mk("loop8/loop/backing_file", "/var/tmp/other.img\n")
	got := Users(name, unix.Mkdev(4095, 1048000))
	want := []string{
		name + " is held by dm-3",
		name + "p2 is held by md7",
		name + "p2 is the backing file of loop9",
	}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("Users = %q, want %q", got, want)
	}
}
