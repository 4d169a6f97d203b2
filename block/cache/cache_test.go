package cache_test

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/block"
	"vdisk/block/cache"
	_ "vdisk/drivers"
	"vdisk/format/mem"
)

// TestCacheMirror mixes reads, writes, zeroing and discards through the
// cache and checks every read against a mirror.
func TestCacheMirror(t *testing.T) {
	inner := mem.New(3<<20 + 777)
	img := cache.New(inner, 5*cache.BlockSize)
	mirror := make([]byte, inner.Size())
	rng := rand.New(rand.NewSource(3))
	for i := 0; i < 1500; i++ {
		l := int64(rng.Intn(100000) + 1)
		off := rng.Int63n(int64(len(mirror)) - l)
		switch rng.Intn(8) {
		case 0:
			p := make([]byte, l)
			rng.Read(p)
			if _, err := img.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(mirror[off:], p)
		case 1:
			if err := img.WriteZeroes(off, l, 0); err != nil {
				t.Fatal(err)
			}
			clear(mirror[off : off+l])
		default:
			p := make([]byte, l)
			if _, err := img.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, mirror[off:off+l]) {
				t.Fatalf("op %d: read %d+%d differs", i, off, l)
			}
		}
	}
	if hits, _ := img.Stats(); hits == 0 {
		t.Fatal("no cache hits at all")
	}
	// Beyond the end fails as for the image.
	if _, err := img.ReadAt(make([]byte, 2), img.Size()-1); err == nil {
		t.Fatal("read past the end succeeded")
	}
}

// TestCacheConcurrent races readers against writers that each own a
// region; under -race, and every read must see a complete write.
func TestCacheConcurrent(t *testing.T) {
	inner := mem.New(1 << 20)
	img := cache.New(inner, 4*cache.BlockSize)
	const region = 1 << 16
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(2)
		go func(w int) {
			defer wg.Done()
			for v := 1; v <= 50; v++ {
				img.WriteAt(bytes.Repeat([]byte{byte(v)}, region/2), int64(w)*region)
			}
		}(w)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, region/2)
			for i := 0; i < 100; i++ {
				img.ReadAt(buf, int64(w)*region)
				for _, b := range buf {
					if b != buf[0] {
						t.Error("torn read through the cache")
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	buf := make([]byte, region/2)
	for w := 0; w < 8; w++ {
		img.ReadAt(buf, int64(w)*region)
		if buf[0] != 50 || buf[len(buf)-1] != 50 {
			t.Fatalf("region %d holds %d after the last write of 50: stale cache", w, buf[0])
		}
	}
}

// TestOpenCacheSize checks that block.Open installs the cache.
func TestOpenCacheSize(t *testing.T) {
	file := filepath.Join(t.TempDir(), "r.img")
	if err := block.Create(file, "raw", block.Options{"size": int64(1 << 20)}); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(file, block.OpenOptions{Format: "raw", CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, ok := img.(*cache.Image); !ok {
		t.Fatalf("Open with CacheSize returned %T", img)
	}
}

// slow adds a fixed latency to every read, like an image over a network.
type slow struct {
	block.Image
	d time.Duration
}

func (s slow) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.d)
	return s.Image.ReadAt(p, off)
}

func benchReread(b *testing.B, img block.Image, set int64) {
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := rng.Int63n(set/4096) * 4096
		if _, err := img.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

func openBench(b *testing.B, format string, opts block.Options) string {
	file := filepath.Join(b.TempDir(), "img")
	if err := block.Create(file, format, opts); err != nil {
		b.Fatal(err)
	}
	img, err := block.Open(file, block.OpenOptions{Format: format})
	if err != nil {
		b.Fatal(err)
	}
	p := make([]byte, 1<<20)
	rand.New(rand.NewSource(2)).Read(p)
	for off := int64(0); off < 16<<20; off += 1 << 20 {
		img.WriteAt(p, off)
	}
	img.Close()
	return file
}

// BenchmarkReread re-reads 4 KiB pieces of a 16 MiB working set: the
// cache's best case. Over a local file the page cache already serves it;
// over a slow backend the cache pays off.
func BenchmarkReread(b *testing.B) {
	const set = 16 << 20
	for _, c := range []struct {
		name   string
		format string
		opts   block.Options
	}{
		{"raw-file", "raw", block.Options{"size": int64(64 << 20)}},
		{"vhd-file", "vhd", block.Options{"size": int64(64 << 20), "subformat": "dynamic", "block_size": int64(2 << 20)}},
	} {
		file := openBench(b, c.format, c.opts)
		for _, size := range []int64{0, 64 << 20} {
			b.Run(c.name+"/cache="+block.FormatSize(size), func(b *testing.B) {
				img, err := block.Open(file, block.OpenOptions{Format: c.format, CacheSize: size})
				if err != nil {
					b.Fatal(err)
				}
				defer img.Close()
				benchReread(b, img, set)
			})
		}
	}
	for _, size := range []int64{0, 64 << 20} {
		b.Run("slow-100us/cache="+block.FormatSize(size), func(b *testing.B) {
			var img block.Image = slow{mem.New(64 << 20), 100 * time.Microsecond}
			if size > 0 {
				img = cache.New(img, size)
			}
			benchReread(b, img, set)
		})
	}
}

// BenchmarkColdSequential reads a file image once, sequentially in 4 KiB
// reads, with no reuse: the cache's worst case (it reads 64 KiB blocks
// and copies).
func BenchmarkColdSequential(b *testing.B) {
	file := openBench(b, "raw", block.Options{"size": int64(16 << 20)})
	for _, size := range []int64{0, 1 << 20} {
		b.Run("cache="+block.FormatSize(size), func(b *testing.B) {
			buf := make([]byte, 4096)
			b.SetBytes(16 << 20)
			for i := 0; i < b.N; i++ {
				img, err := block.Open(file, block.OpenOptions{Format: "raw", CacheSize: size})
				if err != nil {
					b.Fatal(err)
				}
				for off := int64(0); off < 16<<20; off += 4096 {
					img.ReadAt(buf, off)
				}
				img.Close()
			}
		})
	}
}

// stallRead holds one read after it fetched its data, so that a test can
// complete a write in between.
type stallRead struct {
	block.Image
	fetched, release chan struct{}
	armed            bool
}

func (s *stallRead) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.Image.ReadAt(p, off)
	if s.armed {
		s.armed = false
		close(s.fetched)
		<-s.release
	}
	return n, err
}

// TestFillRacingWrite: a read that fetched a block before a write to it
// finished must not leave its old copy in the cache, whichever of write,
// zeroing and discard it raced with.
func TestFillRacingWrite(t *testing.T) {
	ops := map[string]func(img block.Image) error{
		"write": func(img block.Image) error {
			_, err := img.WriteAt(bytes.Repeat([]byte{2}, 4096), 4096)
			return err
		},
		"zero":    func(img block.Image) error { return img.WriteZeroes(4096, 4096, 0) },
		"discard": func(img block.Image) error { return img.Discard(4096, 4096) },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			inner := mem.New(1 << 20)
			inner.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 0)
			s := &stallRead{Image: inner, fetched: make(chan struct{}), release: make(chan struct{}), armed: true}
			img := cache.New(s, 1<<20)
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 512)
				img.ReadAt(buf, 0) // fills block 0 with the old bytes
			}()
			<-s.fetched
			if err := op(img); err != nil {
				t.Fatal(err)
			}
			close(s.release)
			<-done
			want := bytes.Repeat([]byte{2}, 4096)
			if name != "write" {
				want = make([]byte, 4096)
			}
			got := make([]byte, 4096)
			if _, err := img.ReadAt(got, 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read after %s returns the bytes of a fill that raced with it", name)
			}
		})
	}
}

// shrinking reports its full size to the first Size call (the range
// check) and half of it afterwards, as if resized during a read.
type shrinking struct {
	block.Image
	mu    sync.Mutex
	calls int
}

func (s *shrinking) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls == 1 {
		return s.Image.Size()
	}
	return s.Image.Size() / 2
}

// TestFillAfterShrink: a read whose range the image lost to a concurrent
// shrink fails cleanly instead of panicking.
func TestFillAfterShrink(t *testing.T) {
	img := cache.New(&shrinking{Image: mem.New(8 * cache.BlockSize)}, 8*cache.BlockSize)
	p := make([]byte, 2*cache.BlockSize)
	if _, err := img.ReadAt(p, 5*cache.BlockSize-100); err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Fatalf("a read past the shrunk end: %v", err)
	}
}
