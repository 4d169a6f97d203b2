package attach

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"vdisk/attach/ctl"
	_ "vdisk/drivers"
)

func startDaemon(t *testing.T) *ctl.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("daemon tests need root (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "state")
	d, err := New(Config{StateDir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		d.Serve(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	if st, err := os.Stat(filepath.Join(dir, ctl.SocketName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v, %v", st, err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode: %v, %v", st, err)
	}
	return ctl.NewClient(dir)
}

func TestDaemonUnits(t *testing.T) {
	c := startDaemon(t)
	// Concurrent attaches get distinct units.
	var wg sync.WaitGroup
	units := make([]*ctl.UnitInfo, 4)
	for i := range units {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := c.Attach(ctl.AttachArgs{MemSize: int64(i+1) << 20})
			if err != nil {
				t.Error(err)
				return
			}
			units[i] = u
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[string]bool{}
	for _, u := range units {
		if seen[u.Unit] || seen[u.Device] {
			t.Errorf("unit or device handed out twice: %+v", u)
		}
		seen[u.Unit], seen[u.Device] = true, true
	}
	list, err := c.List()
	if err != nil || len(list) != 4 || list[0].Unit != "vd0" || list[3].Unit != "vd3" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := c.Attach(ctl.AttachArgs{MemSize: 1 << 20, Unit: "vd2"}); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("attach to a unit in use: %v, want EBUSY", err)
	}
	for _, secbits := range []int{7, 20} {
		if _, err := c.Attach(ctl.AttachArgs{MemSize: 1 << 20, SecBits: secbits}); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("attach with secbits %d: %v, want EINVAL", secbits, err)
		}
	}
	if _, err := c.Detach("vd9", false); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("detach of a free unit: %v, want ENXIO", err)
	}
	if _, _, err := c.Stat("vd0"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("stat of a RAM disk: %v, want ENOENT", err)
	}
	// A process holding the device makes it busy.
	dev, err := os.Open(units[1].Device)
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "60")
	holder.ExtraFiles = []*os.File{dev}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	_, err = c.Detach(units[1].Unit, false)
	holder.Process.Kill()
	holder.Wait()
	if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("detach of a device open by a process: %v, want EBUSY", err)
	}
	for _, u := range units {
		if _, err := c.Detach(u.Device, false); err != nil {
			t.Errorf("detach %s: %v", u.Device, err)
		}
	}
	if list, _ := c.List(); len(list) != 0 {
		t.Errorf("units left: %+v", list)
	}
}

func TestDaemonStatRelative(t *testing.T) {
	c := startDaemon(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "d.img"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := c.Attach(ctl.AttachArgs{File: "d.img", Dir: dir, Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Detach(u.Unit, true)
	if u.File != "d.img" || u.VirtualSize != 1<<20 || u.Format != "raw" {
		t.Errorf("unit %+v", u)
	}
	st, _, err := c.Stat(u.Unit)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "d.img"))
	sys := fi.Sys().(*syscall.Stat_t)
	if st.Ino != sys.Ino || st.Size != fi.Size() || st.Mode != sys.Mode || st.Mtime.Sec != sys.Mtim.Sec {
		t.Errorf("stat %+v does not match %+v", st, sys)
	}
	os.Chmod(filepath.Join(dir, "d.img"), 0o444)
	_, err = c.Attach(ctl.AttachArgs{File: "d.img", Dir: dir, Format: "raw", Unit: "vd5"})
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("read-write attach of a read-only file: %v, want EROFS", err)
	}
	if list, _ := c.List(); len(list) != 1 {
		t.Errorf("failed attach left a unit: %+v", list)
	}
	if _, err := os.Stat(filepath.Join(c.StateDir, ctl.FUSEDir, "vd5")); err == nil {
		t.Error("failed attach left its FUSE directory")
	}
}

// A state directory the daemon did not make is used as it is or refused,
// never chmodded: --state-dir /tmp must not lock everyone else out of /tmp.
func TestStateDirRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("daemon tests need root (CI runs as root)")
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := t.TempDir()
	shared := filepath.Join(base, "shared")
	os.Mkdir(shared, 0o700)
	os.Chmod(shared, os.ModeSticky|0o777)
	other := filepath.Join(base, "other")
	os.Mkdir(other, 0o700)
	os.Chown(other, 65534, 65534)
	group := filepath.Join(base, "group")
	os.Mkdir(group, 0o700)
	os.Chmod(group, 0o770)
	link := filepath.Join(base, "link")
	private := filepath.Join(base, "private")
	os.Mkdir(private, 0o700)
	os.Symlink(private, link)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct {
		dir, want string
		mode      os.FileMode
	}{
		{shared, "writable by group or others (mode 1777)", os.ModeDir | os.ModeSticky | 0o777},
		{other, "owned by uid 65534", os.ModeDir | 0o700},
		{group, "writable by group or others (mode 0770)", os.ModeDir | 0o770},
		{link, "symbolic link", os.ModeSymlink | 0o777},
		{file, "not a directory", 0o600},
	} {
		d, err := New(Config{StateDir: c.dir, Log: quiet})
		if err == nil {
			d.Shutdown()
			d.ln.Close()
			t.Errorf("%s accepted as a state directory", c.dir)
		} else if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.dir, err, c.want)
		}
		if st, err := os.Lstat(c.dir); err != nil || st.Mode() != c.mode {
			t.Errorf("%s: mode changed to %v (%v), want %v", c.dir, st.Mode(), err, c.mode)
		}
		if ents, _ := os.ReadDir(c.dir); len(ents) != 0 && c.dir != link {
			t.Errorf("%s: files left in a refused directory: %v", c.dir, ents)
		}
	}
	// A private directory of ours is used without a change of mode; a
	// missing one is made with its parents, mode 0700.
	os.Chmod(private, 0o750)
	made := filepath.Join(base, "a", "b", "state")
	for _, dir := range []string{private, made} {
		d, err := New(Config{StateDir: dir, Log: quiet})
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		d.ln.Close()
		d.Shutdown()
	}
	if st, _ := os.Stat(private); st.Mode().Perm() != 0o750 {
		t.Errorf("existing private directory chmodded to %v", st.Mode())
	}
	if st, _ := os.Stat(made); st.Mode().Perm() != 0o700 {
		t.Errorf("new state directory has mode %v, want 0700", st.Mode())
	}
}
