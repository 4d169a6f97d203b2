package imgtool

import (
	"math/rand"
	"testing"

	"vdisk/block"
	"vdisk/format/mem"
)

// benchCopy copies a 64 MiB RAM disk where every dataEvery-th MiB holds
// random data, measuring the engine without storage in the way.
func benchCopy(b *testing.B, dataEvery int, o CopyOptions) {
	const size = 64 << 20
	src := mem.New(size)
	buf := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(buf)
	for off := int64(0); off < size; off += int64(dataEvery) << 20 {
		src.WriteAt(buf, off)
	}
	o.TargetZeroed = true
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		dst := mem.New(size)
		if err := Copy(src, dst, o); err != nil {
			b.Fatal(err)
		}
		dst.Close()
	}
}

func BenchmarkCopyDense(b *testing.B) { benchCopy(b, 1, CopyOptions{Sparse: 4096}) }
func BenchmarkCopyDenseOutOfOrder(b *testing.B) {
	benchCopy(b, 1, CopyOptions{Sparse: 4096, OutOfOrder: true})
}
func BenchmarkCopyDenseOneWorker(b *testing.B) {
	benchCopy(b, 1, CopyOptions{Sparse: 4096, Workers: 1})
}
func BenchmarkCopySparse(b *testing.B) { benchCopy(b, 10, CopyOptions{Sparse: 4096}) }

func BenchmarkIsZero2M(b *testing.B) {
	p := make([]byte, 2<<20)
	b.SetBytes(int64(len(p)))
	for range b.N {
		if !block.IsZero(p) {
			b.Fatal("not zero")
		}
	}
}
