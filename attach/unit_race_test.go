package attach

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"vdisk/format/mem"
)

// TestInfoStatDuringDetach runs list's and stat's view of a unit while it
// is detached: they must not read the fields detach clears unguarded (the
// race detector catches that), nor fstat a descriptor detach closed.
func TestInfoStatDuringDetach(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 20; round++ {
		sf, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		u := &Unit{ID: 7, File: file, SecBits: 9, img: mem.New(1 << 20), statFile: sf}
		var stop atomic.Bool
		var wg sync.WaitGroup
		started := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				if i == 10 {
					close(started)
				}
				u.info()
				if _, err := u.stat(); err != nil && errnoOf(err) != syscall.ENOENT {
					t.Errorf("stat during detach: %v", err)
					stop.Store(true)
				}
			}
		}()
		<-started
		if err := u.detach(false); err != nil {
			t.Fatal(err)
		}
		stop.Store(true)
		wg.Wait()
		if _, err := u.stat(); errnoOf(err) != syscall.ENOENT {
			t.Fatalf("stat after detach: %v, want ENOENT", err)
		}
	}
}

// TestDetachTwice: two detaches of one unit (two clients at once) take it
// down once. The second finds it gone (ENXIO) rather than flushing and
// closing a closed image, and it must not remove a new unit that was given
// the freed number in between.
func TestDetachTwice(t *testing.T) {
	d := &Daemon{cfg: Config{StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		units: map[int]*Unit{}, reserved: map[int]bool{}}
	old := &Unit{ID: 3, File: "mem:1048576", SecBits: 9, img: mem.New(1 << 20)}
	d.units[3] = old
	if err := d.detach(old, false); err != nil {
		t.Fatal(err)
	}
	// The number is reused before the second client's detach runs.
	reused := &Unit{ID: 3, File: "mem:2097152", SecBits: 9, img: mem.New(2 << 20)}
	d.units[3] = reused
	if err := d.detach(old, false); errnoOf(err) != syscall.ENXIO {
		t.Errorf("second detach of a unit: %v, want ENXIO", err)
	}
	if d.units[3] != reused {
		t.Fatal("a stale detach removed the unit that now has its number")
	}
	if _, err := reused.img.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("the new unit's image: %v", err)
	}
}
