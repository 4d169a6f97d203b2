package cache_test

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/block"
	"vdisk/block/cache"
)

func createVHD(t *testing.T, file string, opts ...[2]string) {
	t.Helper()
	f, err := block.Lookup("vhd")
	if err != nil {
		t.Fatal(err)
	}
	o, err := block.ParseOptions(f.CreateOptions, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Create(file, "vhd", o); err != nil {
		t.Fatal(err)
	}
}

// TestCacheOverVHD runs writers and readers through a small cache over a
// dynamic and a differencing VHD at once. Each goroutine owns units that
// share cache blocks (and VHD blocks and sectors) with the others' units,
// and checks every read of its own units against a mirror, so a stale or
// torn cached block shows. Run under -race.
func TestCacheOverVHD(t *testing.T) {
	dir := t.TempDir()
	const size = 4 << 20
	parent := filepath.Join(dir, "parent.vhd")
	createVHD(t, parent, [2]string{"size", "4M"}, [2]string{"force_size", "on"}, [2]string{"block_size", "64K"})
	parentData := make([]byte, size)
	rand.New(rand.NewSource(9)).Read(parentData)
	pimg, err := block.Open(parent, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pimg.WriteAt(parentData, 0); err != nil {
		t.Fatal(err)
	}
	pimg.Close()

	for _, c := range []struct {
		name string
		opts [][2]string
		base []byte
	}{
		{"dynamic", [][2]string{{"size", "4M"}, {"force_size", "on"}, {"block_size", "64K"}}, make([]byte, size)},
		{"differencing", [][2]string{{"backing_file", "parent.vhd"}, {"block_size", "4K"}}, parentData},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(dir, c.name+".vhd")
			createVHD(t, file, c.opts...)
			img, err := block.Open(file, block.OpenOptions{CacheSize: 4 * cache.BlockSize})
			if err != nil {
				t.Fatal(err)
			}
			ci, ok := img.(*cache.Image)
			if !ok {
				t.Fatalf("opened as %T, not through the cache", img)
			}
			if img.Size() != size {
				t.Fatalf("size %d", img.Size())
			}
			mirror := append([]byte(nil), c.base...)
			const workers, unit = 6, 5000
			units := size / unit
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					rng := rand.New(rand.NewSource(int64(w)))
					u := 0
					for i := 0; i < 400; i++ {
						// A run of operations on one unit, so that reads
						// find blocks the cache holds after a write.
						if i%10 == 0 {
							u = rng.Intn(units/workers)*workers + w
						}
						off := u*unit + rng.Intn(unit)
						n := 1 + rng.Intn(u*unit+unit-off)
						switch rng.Intn(5) {
						case 0:
							p := make([]byte, n)
							rng.Read(p)
							if _, err := img.WriteAt(p, int64(off)); err != nil {
								t.Error(err)
								return
							}
							copy(mirror[off:], p)
						case 1:
							if err := img.WriteZeroes(int64(off), int64(n), 0); err != nil {
								t.Error(err)
								return
							}
							clear(mirror[off : off+n])
						default:
							p := make([]byte, n)
							if _, err := img.ReadAt(p, int64(off)); err != nil {
								t.Error(err)
								return
							}
							if !bytes.Equal(p, mirror[off:off+n]) {
								t.Errorf("worker %d: read %d+%d differs from the mirror", w, off, n)
								return
							}
						}
					}
				}(w)
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			got := make([]byte, size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, mirror) {
				t.Fatal("content through the cache differs from the mirror")
			}
			if hits, misses := ci.Stats(); hits == 0 || misses == 0 {
				t.Fatalf("%d hits, %d misses: the cache was not exercised", hits, misses)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			// Nothing acknowledged lived only in the cache.
			img, err = block.Open(file, block.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, mirror) {
				t.Fatal("reopened without the cache, the content differs from the mirror")
			}
		})
	}
}
