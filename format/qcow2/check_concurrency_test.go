package qcow2_test

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/block"
)

// Check on an image that other goroutines write is exact, as qemu-img
// check of a quiesced image: allocating writes in flight, frees not yet
// applied and L2 tables not yet written back (new ones at the end of the
// file, in clusters that held compressed streams before) are neither
// leaks nor corruptions.
func TestCheckWhileWriting(t *testing.T) {
	const cs, size = 4096, 2 << 20
	name := filepath.Join(t.TempDir(), "c.qcow2")
	vdiskCreate(t, name, "cluster_size=4k", size)
	// Slow data writes widen the window of allocating writes in flight.
	img := openWrapped(t, name, func(f block.File) block.File { return &slowFile{File: f, min: cs, delay: 100 * time.Microsecond} })
	text := bytes.Repeat([]byte("compressible text "), 2*cs/18+1)[:2*cs]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			buf := make([]byte, 4*cs)
			for {
				select {
				case <-stop:
					return
				default:
				}
				r.Read(buf)
				off := r.Int63n(size/cs-4) * cs
				var err error
				switch r.Intn(6) {
				case 0, 1:
					_, err = img.WriteAt(buf[:(1+r.Intn(4))*cs], off)
				case 2:
					_, err = img.WriteAt(buf[:1+r.Intn(cs)], off+r.Int63n(cs))
				case 3:
					err = img.Discard(off, (1+r.Int63n(4))*cs)
				case 4:
					err = img.WriteZeroes(off, (1+r.Int63n(4))*cs, block.ZeroMayUnmap)
				case 5:
					err = img.(block.CompressedWriter).WriteCompressed(text, off)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 40; i++ {
		res, err := img.(block.Checker).Check(block.RepairNone)
		if err != nil {
			t.Error(err)
			break
		}
		if res.Corruptions != 0 || res.Leaks != 0 || res.CheckErrors != 0 {
			msgs := res.Messages[:min(len(res.Messages), 10)]
			t.Errorf("check %d while writing: %d corruptions, %d leaks, %d check errors\n%s", i, res.Corruptions, res.Leaks, res.CheckErrors, strings.Join(msgs, "\n"))
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
}
