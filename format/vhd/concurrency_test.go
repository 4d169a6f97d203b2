package vhd_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/block"
)

// TestConcurrentWriters has writers on disjoint ranges and readers run at
// once, including pairs racing to allocate the same block, on dynamic and
// differencing disks. Run under -race.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vhd")
	create(t, base, map[string]string{"size": "4M", "block_size": "64K"})
	bimg := openRW(t, base)
	pattern := bytes.Repeat([]byte{0xEE}, 4<<20)
	if _, err := bimg.WriteAt(pattern, 0); err != nil {
		t.Fatal(err)
	}
	bimg.Close()
	child := filepath.Join(dir, "child.vhd")
	create(t, child, map[string]string{"backing_file": "base.vhd"})

	for _, file := range []string{filepath.Join(dir, "dyn.vhd"), child} {
		if file != child {
			create(t, file, map[string]string{"size": "4M", "block_size": "64K"})
		}
		t.Run(filepath.Base(file), func(t *testing.T) {
			img := openRW(t, file)
			const writers = 8
			const unit = 1000 // not sector-aligned: writers share sectors as well as blocks
			var wg sync.WaitGroup
			want := make([]byte, img.Size())
			copy(want, pattern)
			if file != child {
				clear(want)
			}
			// Writer w owns every writers-th unit; neighbouring units share
			// blocks and sectors, so allocation and bitmap updates race.
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					p := bytes.Repeat([]byte{byte(w + 1)}, unit)
					for u := w; u*unit+unit <= int(img.Size()) && u < 800; u += writers {
						if _, err := img.WriteAt(p, int64(u*unit)); err != nil {
							t.Error(err)
							return
						}
					}
				}(w)
			}
			for w := 0; w < writers; w++ {
				for u := w; u*unit+unit <= len(want) && u < 800; u += writers {
					copy(want[u*unit:], bytes.Repeat([]byte{byte(w + 1)}, unit))
				}
			}
			for r := 0; r < 4; r++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 64<<10)
					for i := 0; i < 30; i++ {
						if _, err := img.ReadAt(buf, int64(i%64)<<16); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if !bytes.Equal(readAll(t, img), want) {
				t.Fatal("content after concurrent writes differs")
			}
			img.Close()
			img = openRW(t, file)
			defer img.Close()
			if !bytes.Equal(readAll(t, img), want) {
				t.Fatal("reopened content differs")
			}
			res := check(t, img, block.RepairNone)
			if res.Corruptions != 0 || res.Leaks != 0 {
				t.Fatalf("check after concurrent writes: %+v %v", res, res.Messages)
			}
		})
	}
}

// TestRaceSameBlock has many writers allocate the same block at once.
func TestRaceSameBlock(t *testing.T) {
	file := filepath.Join(t.TempDir(), "r.vhd")
	create(t, file, map[string]string{"size": "1M", "block_size": "64K"})
	img := openRW(t, file)
	defer img.Close()
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				<-start
				p := bytes.Repeat([]byte{byte(w + 1)}, 1000)
				if _, err := img.WriteAt(p, int64(round)<<16+int64(w)*1000); err != nil {
					t.Error(err)
				}
			}(w)
		}
		close(start)
		wg.Wait()
		buf := make([]byte, 16000)
		img.ReadAt(buf, int64(round)<<16)
		for w := 0; w < 16; w++ {
			if !bytes.Equal(buf[w*1000:(w+1)*1000], bytes.Repeat([]byte{byte(w + 1)}, 1000)) {
				t.Fatalf("round %d: writer %d's data lost", round, w)
			}
		}
	}
	res := check(t, img, block.RepairNone)
	if res.AllocatedClusters != 5 || res.Leaks != 0 || res.Corruptions != 0 {
		t.Fatalf("%d blocks allocated for 5 (%+v %v)", res.AllocatedClusters, res, fmt.Sprint(res.Messages))
	}
}
