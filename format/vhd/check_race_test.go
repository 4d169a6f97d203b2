package vhd

import (
	"bytes"
	"math/rand"
	"sync"
	"testing"
	"time"

	"vdisk/block"
)

// TestCheckExcludesWrites writes into each block that a leak repair is
// moving, after the block is copied and before the table points at the
// copy. The write must wait for the repair and land in the moved block;
// without the exclusion it lands in the old place and is lost.
func TestCheckExcludesWrites(t *testing.T) {
	base, want := leakyImage(t)
	img, err := Open(&memFile{b: append([]byte(nil), base...)}, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	m := img.(*Image)
	var wg sync.WaitGroup
	var mu sync.Mutex
	moved := 0
	testHookCompact = func(idx int64) {
		mu.Lock()
		moved++
		mu.Unlock()
		p := bytes.Repeat([]byte{0xE0 + byte(idx)}, 1000)
		off := idx<<12 + 300
		copy(want[off:], p)
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			if _, err := img.WriteAt(p, off); err != nil {
				t.Error(err)
			}
		}()
		// Give the write the chance to land while the block is mid-move;
		// with the exclusion it cannot, and this waits out the chance.
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer func() { testHookCompact = nil }()
	res, err := m.Check(block.RepairLeaks)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if moved == 0 || res.LeaksFixed == 0 {
		t.Fatalf("the repair moved no blocks: %+v", res)
	}
	if !bytes.Equal(readImage(t, img), want) {
		t.Fatal("a write made while its block was being moved is lost")
	}
}

// TestCheckConcurrentWrites runs repairs while writers rewrite allocated
// blocks and allocate new ones; run under -race. Every write must survive.
func TestCheckConcurrentWrites(t *testing.T) {
	for round := 0; round < 4; round++ {
		base, want := leakyImage(t)
		img, err := Open(&memFile{b: append([]byte(nil), base...)}, &block.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m := img.(*Image)
		var wg sync.WaitGroup
		const writers = 4
		// Writer w owns the bytes at offsets ≡ w (mod writers) units of 700.
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(round*writers + w)))
				for i := 0; i < 60; i++ {
					u := rng.Intn(int(m.Size())/700/writers)*writers + w
					p := make([]byte, 700)
					rng.Read(p)
					if _, err := img.WriteAt(p, int64(u)*700); err != nil {
						t.Error(err)
						return
					}
					copy(want[u*700:], p)
				}
			}(w)
		}
		for i := 0; i < 3; i++ {
			if _, err := m.Check(block.RepairAll); err != nil {
				t.Fatal(err)
			}
		}
		wg.Wait()
		if !bytes.Equal(readImage(t, img), want) {
			t.Fatalf("round %d: content after concurrent repairs differs", round)
		}
		res, err := m.Check(block.RepairNone)
		if err != nil || res.Corruptions != 0 {
			t.Fatalf("round %d: %+v %v", round, res, err)
		}
		img.Close()
	}
}
