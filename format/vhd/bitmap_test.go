package vhd

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/block"
)

// TestBitmapEviction writes a differencing disk with 4 KiB blocks from
// several goroutines over far more blocks than the bitmap cache holds, in
// two passes, so that bitmaps are evicted, reloaded from the file and
// updated again while other writers and readers use them. Run under -race.
func TestBitmapEviction(t *testing.T) {
	dir := t.TempDir()
	base, child := filepath.Join(dir, "base.vhd"), filepath.Join(dir, "child.vhd")
	makeVHD(t, base, map[string]string{"size": "4M", "block_size": "64K", "force_size": "on"})
	want := make([]byte, 4<<20)
	rand.New(rand.NewSource(1)).Read(want)
	writeVHD(t, base, want)
	makeVHD(t, child, map[string]string{"backing_file": "base.vhd", "block_size": "4K"})

	img, err := block.Open(child, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := img.(*Image)
	const writers, unit = 6, 1300 // units straddle sectors and blocks
	units := len(want) / unit
	var wg sync.WaitGroup
	for pass := 0; pass < 2; pass++ {
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(pass*writers + w)))
				// Writer w owns units ≡ w (mod writers), in a random order
				// so that blocks are visited out of LRU order.
				var mine []int
				for u := w; u < units; u += writers {
					mine = append(mine, u)
				}
				rng.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
				// The second pass rewrites part of each unit: sectors
				// partly present, in blocks whose bitmaps were evicted.
				for _, u := range mine[:len(mine)*(2-pass)/2] {
					off, n := u*unit, unit
					if pass == 1 {
						off, n = off+rng.Intn(unit/2), 1+rng.Intn(unit/2)
					}
					p := make([]byte, n)
					rng.Read(p)
					if _, err := img.WriteAt(p, int64(off)); err != nil {
						t.Error(err)
						return
					}
					copy(want[off:], p)
				}
			}(w)
		}
		// Readers walk the disk meanwhile; what they see is checked below.
		for r := 0; r < 2; r++ {
			wg.Add(1)
			go func(r int) {
				defer wg.Done()
				buf := make([]byte, 20000)
				rng := rand.New(rand.NewSource(int64(100 + r)))
				for i := 0; i < 200; i++ {
					if _, err := img.ReadAt(buf, rng.Int63n(int64(len(want)-len(buf)))); err != nil {
						t.Error(err)
						return
					}
				}
			}(r)
		}
		wg.Wait()
		if got := m.bitmaps.ll.Len(); got != bitmapCacheEntries {
			t.Fatalf("pass %d: %d bitmaps cached, want the cache full at %d", pass, got, bitmapCacheEntries)
		}
		if !bytes.Equal(readImage(t, img), want) {
			t.Fatalf("pass %d: content differs", pass)
		}
	}
	img.Close()
	img, err = block.Open(child, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if !bytes.Equal(readImage(t, img), want) {
		t.Fatal("reopened content differs")
	}
	if res, err := img.(block.Checker).Check(block.RepairNone); err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
}
