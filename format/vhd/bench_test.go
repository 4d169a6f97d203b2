package vhd_test

import (
	"math/rand"
	"path/filepath"
	"testing"

	"vdisk/block"
)

const benchSize = 64 << 20

// benchImage makes a benchmark image, filled with data when full is set.
func benchImage(b *testing.B, format string, opts map[string]string, full bool) block.Image {
	file := filepath.Join(b.TempDir(), "b.img")
	f, _ := block.Lookup(format)
	var pairs [][2]string
	for k, v := range opts {
		pairs = append(pairs, [2]string{k, v})
	}
	o, err := block.ParseOptions(f.CreateOptions, pairs)
	if err != nil {
		b.Fatal(err)
	}
	if err := block.Create(file, format, o); err != nil {
		b.Fatal(err)
	}
	img, err := block.Open(file, block.OpenOptions{Format: format})
	if err != nil {
		b.Fatal(err)
	}
	if full {
		p := make([]byte, 1<<20)
		rand.New(rand.NewSource(1)).Read(p)
		for off := int64(0); off+int64(len(p)) <= img.Size(); off += int64(len(p)) {
			if _, err := img.WriteAt(p, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Cleanup(func() { img.Close() })
	return img
}

var benchKinds = []struct {
	name   string
	format string
	opts   map[string]string
}{
	{"raw", "raw", map[string]string{"size": "64M"}},
	{"vhd-fixed", "vhd", map[string]string{"size": "64M", "subformat": "fixed", "force_size": "on"}},
	{"vhd-dynamic", "vhd", map[string]string{"size": "64M", "force_size": "on"}},
}

func BenchmarkRandomRead4K(b *testing.B) {
	for _, k := range benchKinds {
		b.Run(k.name, func(b *testing.B) {
			img := benchImage(b, k.format, k.opts, true)
			rng := rand.New(rand.NewSource(2))
			buf := make([]byte, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := img.ReadAt(buf, rng.Int63n(benchSize/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRandomWrite4K overwrites allocated data; "alloc" writes into a
// fresh dynamic image, so the first write to each block allocates it
// (footer, bitmap, fsync, BAT entry).
func BenchmarkRandomWrite4K(b *testing.B) {
	kinds := append(benchKinds[:len(benchKinds):len(benchKinds)], struct {
		name   string
		format string
		opts   map[string]string
	}{"vhd-dynamic-alloc", "vhd", map[string]string{"size": "64M", "force_size": "on"}})
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			img := benchImage(b, k.format, k.opts, k.name != "vhd-dynamic-alloc")
			rng := rand.New(rand.NewSource(3))
			buf := make([]byte, 4096)
			rng.Read(buf)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := img.WriteAt(buf, rng.Int63n(benchSize/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSequential1M(b *testing.B) {
	for _, k := range benchKinds {
		for _, op := range []string{"read", "write"} {
			b.Run(k.name+"/"+op, func(b *testing.B) {
				img := benchImage(b, k.format, k.opts, true)
				buf := make([]byte, 1<<20)
				b.SetBytes(1 << 20)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					off := int64(i%(benchSize>>20)) << 20
					var err error
					if op == "read" {
						_, err = img.ReadAt(buf, off)
					} else {
						_, err = img.WriteAt(buf, off)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDifferencingRead4K reads through a child whose blocks are
// partly present (every other 4 KiB written), exercising the bitmap cache.
func BenchmarkDifferencingRead4K(b *testing.B) {
	dir := b.TempDir()
	base := filepath.Join(dir, "base.vhd")
	for _, c := range []struct {
		file string
		opts map[string]string
	}{{base, map[string]string{"size": "64M", "force_size": "on"}}, {filepath.Join(dir, "child.vhd"), map[string]string{"backing_file": "base.vhd"}}} {
		f, _ := block.Lookup("vhd")
		var pairs [][2]string
		for k, v := range c.opts {
			pairs = append(pairs, [2]string{k, v})
		}
		o, _ := block.ParseOptions(f.CreateOptions, pairs)
		if err := block.Create(c.file, "vhd", o); err != nil {
			b.Fatal(err)
		}
		img, err := block.Open(c.file, block.OpenOptions{})
		if err != nil {
			b.Fatal(err)
		}
		p := make([]byte, 4096)
		for off := int64(0); off < benchSize; off += 8192 {
			if c.file != base {
				off += 4096
			}
			img.WriteAt(p, off)
			if c.file != base {
				off -= 4096
			}
		}
		img.Close()
	}
	img, err := block.Open(filepath.Join(dir, "child.vhd"), block.OpenOptions{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	rng := rand.New(rand.NewSource(4))
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := img.ReadAt(buf, rng.Int63n(benchSize/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}
