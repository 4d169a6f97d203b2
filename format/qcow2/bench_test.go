package qcow2_test

import (
	"math/rand"
	"path/filepath"
	"sync/atomic"
	"testing"

	"vdisk/block"
)

const benchSize = 256 << 20

// benchImage returns an open image of benchSize bytes, fully written when
// filled is set.
func benchImage(b *testing.B, filled bool) block.Image {
	name := filepath.Join(b.TempDir(), "bench.qcow2")
	vdiskCreate(b, name, "", benchSize)
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		b.Fatal(err)
	}
	if filled {
		buf := make([]byte, 1<<20)
		rand.New(rand.NewSource(1)).Read(buf)
		for off := int64(0); off < benchSize; off += int64(len(buf)) {
			if _, err := img.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := img.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { img.Close() })
	return img
}

func BenchmarkRandRead4K(b *testing.B) {
	img := benchImage(b, true)
	b.SetBytes(4096)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewSource(rand.Int63()))
		buf := make([]byte, 4096)
		for pb.Next() {
			if _, err := img.ReadAt(buf, r.Int63n(benchSize/4096)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRandWrite4K(b *testing.B) {
	img := benchImage(b, true)
	b.SetBytes(4096)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewSource(rand.Int63()))
		buf := make([]byte, 4096)
		for pb.Next() {
			if _, err := img.WriteAt(buf, r.Int63n(benchSize/4096)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRandWrite4KAlloc writes into an empty image: every write
// allocates (and copies the rest of) a cluster.
func BenchmarkRandWrite4KAlloc(b *testing.B) {
	img := benchImage(b, false)
	r := rand.New(rand.NewSource(2))
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := img.WriteAt(buf, r.Int63n(benchSize/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSeqRead1M(b *testing.B) {
	img := benchImage(b, true)
	buf := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := img.ReadAt(buf, int64(i%(benchSize>>20))<<20); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSeqWrite1M(b *testing.B) {
	img := benchImage(b, false)
	buf := make([]byte, 1<<20)
	rand.New(rand.NewSource(3)).Read(buf)
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := img.WriteAt(buf, int64(i%(benchSize>>20))<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParallelAllocWrite64K writes whole fresh clusters from every
// core at once, while another goroutine reads allocated data: allocating
// writes take the metadata lock only to allocate and to link, not for
// their data I/O.
func BenchmarkParallelAllocWrite64K(b *testing.B) {
	name := filepath.Join(b.TempDir(), "bench.qcow2")
	vdiskCreate(b, name, "", 64<<30)
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, 64<<10)
	rand.New(rand.NewSource(4)).Read(buf)
	if _, err := img.WriteAt(buf, 0); err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	var reads atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		rb := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := img.ReadAt(rb, 0); err != nil {
				b.Error(err)
				return
			}
			reads.Add(1)
		}
	}()
	var next atomic.Int64
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := img.WriteAt(buf, next.Add(1)<<16); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	close(stop)
	<-done
	b.ReportMetric(float64(reads.Load())/b.Elapsed().Seconds(), "reads/s")
}
