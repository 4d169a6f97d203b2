package qcow2_test

import (
	"math/rand"
	"path/filepath"
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
