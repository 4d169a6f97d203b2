package qcow2_test

import (
	"bytes"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/block"
)

// TestExtendedL2ConcurrentPartialWrites: many writers make small,
// unaligned writes that share subclusters and clusters of an overlay with
// extended L2 entries (the in-place fast path under the shared lock and
// the subcluster allocation under the exclusive one race); every byte
// must end up as written, the rest as the base.
func TestExtendedL2ConcurrentPartialWrites(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	qemuIO(t, base, "qcow2", "write -P 0x5a 0 1M")
	name := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=16k", "-b", "base.qcow2", "-F", "qcow2", name)
	img, err := block.Open(name, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0x5a}, 1<<20)
	const writers, unit, span = 8, 300, 256 << 10
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for k := 0; ; k++ {
				off := int64((k*writers + g) * unit)
				if off+unit > span {
					return
				}
				p := bytes.Repeat([]byte{byte(g + 1)}, unit)
				if _, err := img.WriteAt(p, off); err != nil {
					t.Error(err)
					return
				}
				if k%50 == 0 {
					img.Flush()
				}
			}
		}(g)
		for k := 0; ; k++ {
			off := (k*writers + g) * unit
			if off+unit > span {
				break
			}
			copy(want[off:off+unit], bytes.Repeat([]byte{byte(g + 1)}, unit))
		}
	}
	wg.Wait()
	got := make([]byte, 1<<20)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("first difference at %d: %#x, want %#x", i, got[i], want[i])
			}
		}
	}
	qemuCheck(t, name)
}
