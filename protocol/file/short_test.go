package file

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"vdisk/block"
)

// A direct write the kernel completes only in part, stopping within a
// block, leaves the rest unaligned: it goes buffered, and the whole
// request succeeds with the right bytes in the file. A short write that
// stops on a block boundary goes on direct.
func TestShortDirectWrite(t *testing.T) {
	for _, short := range []int{100, 4096} {
		name := filepath.Join(t.TempDir(), "d.img")
		if err := os.WriteFile(name, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		bf, err := Open(name, block.OpenFlags{NoCache: true})
		if err != nil {
			t.Fatal(err)
		}
		f := bf.(*File)
		if f.d == nil {
			t.Fatal("no direct I/O on the test's file system")
		}
		// The first direct write stops after short bytes, which it
		// leaves written (through another descriptor: a direct write
		// of that length could not be made).
		other, err := os.OpenFile(name, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		calls := 0
		directPwrite = func(fd int, p []byte, off int64) (int, error) {
			calls++
			if calls == 1 {
				return other.WriteAt(p[:short], off)
			}
			return pwrite(fd, p, off)
		}
		p := make([]byte, 64<<10)
		rand.New(rand.NewSource(int64(short))).Read(p)
		n, err := f.WriteAt(p, 8192)
		directPwrite = pwrite
		other.Close()
		if err != nil || n != len(p) {
			t.Fatalf("short %d: write: %d, %v", short, n, err)
		}
		if calls < 2 && short%int(f.d.offAlign) == 0 {
			t.Errorf("short %d: an aligned rest did not go on direct", short)
		}
		got := make([]byte, len(p))
		if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, p) {
			t.Errorf("short %d: read back differs: %v", short, err)
		}
		f.Close()
		disk, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(disk[8192:8192+len(p)], p) {
			t.Errorf("short %d: the file differs", short)
		}
	}
}
