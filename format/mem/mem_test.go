package mem_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"sync"
	"testing"

	"vdisk/block"
	"vdisk/format/mem"
	_ "vdisk/format/raw"
)

func TestConcurrentIO(t *testing.T) {
	const size = 8 << 20
	m := mem.New(size)
	defer m.Close()
	var wg sync.WaitGroup
	// Each writer owns a stripe of 4 KiB blocks; readers and block status
	// run over everything at the same time.
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(w + 1)}, 4096)
			for i := int64(w); i < size/4096; i += 4 {
				if _, err := m.WriteAt(buf, i*4096); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(r)))
			buf := make([]byte, 10000)
			for range 500 {
				off := rng.Int63n(size - int64(len(buf)))
				if _, err := m.ReadAt(buf, off); err != nil {
					t.Error(err)
					return
				}
				if _, err := m.BlockStatus(off, 1<<20); err != nil && !errors.Is(err, block.ErrOutOfRange) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 50 {
			m.WriteZeroes(7<<20, 4096, 0)
			m.Info()
		}
	}()
	wg.Wait()
	buf := make([]byte, 4096)
	for i := int64(0); i < size/4096; i++ {
		if i*4096 == 7<<20 {
			continue
		}
		m.ReadAt(buf, i*4096)
		if buf[0] != byte(i%4+1) || buf[4095] != byte(i%4+1) {
			t.Fatalf("block %d holds %d", i, buf[0])
		}
	}
}

func TestSparse(t *testing.T) {
	m := mem.New(1 << 30)
	if in, _ := m.Info(); in.ActualSize != 0 {
		t.Errorf("empty disk holds %d bytes", in.ActualSize)
	}
	// Zeros written to nowhere allocate nothing.
	m.WriteAt(make([]byte, 1<<20), 0)
	if in, _ := m.Info(); in.ActualSize != 0 {
		t.Errorf("zero write allocated %d bytes", in.ActualSize)
	}
	m.WriteAt([]byte{1}, 100<<20)
	in, _ := m.Info()
	if in.ActualSize == 0 || in.ActualSize > 1<<20 {
		t.Errorf("one byte allocated %d bytes", in.ActualSize)
	}
	exts, err := block.MapChain(m, 0, m.Size())
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range exts {
		if e.Status&block.StatusData != 0 {
			data += e.Length
			if e.Offset > 100<<20 || e.Offset+e.Length <= 100<<20 {
				t.Errorf("data extent %v does not hold the written byte", e)
			}
		}
	}
	if data == 0 || data > 1<<20 {
		t.Errorf("%d bytes of data mapped", data)
	}
	// Discard frees whole chunks.
	m.Discard(0, m.Size())
	if in, _ := m.Info(); in.ActualSize != 0 {
		t.Errorf("after discard %d bytes held", in.ActualSize)
	}
	b := []byte{9}
	m.ReadAt(b, 100<<20)
	if b[0] != 0 {
		t.Error("discarded byte still reads")
	}
}

func TestResize(t *testing.T) {
	m := mem.New(1 << 20)
	m.WriteAt(bytes.Repeat([]byte{5}, 4096), 1<<20-4096)
	if err := m.Resize(1<<19, false); err == nil {
		t.Error("shrink without the flag accepted")
	}
	if err := m.Resize(1<<20-2048, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReadAt(make([]byte, 4096), 1<<20-4096); !errors.Is(err, block.ErrOutOfRange) {
		t.Errorf("read past the shrunk end: %v", err)
	}
	// Growing again exposes zeros, not the old bytes.
	if err := m.Resize(2<<20, false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	m.ReadAt(buf, 1<<20-4096)
	if !bytes.Equal(buf[:2048], bytes.Repeat([]byte{5}, 2048)) || !block.IsZero(buf[2048:]) {
		t.Error("regrown range does not read old data then zeros")
	}
	if err := m.Resize(-1, true); err == nil {
		t.Error("negative size accepted")
	}
}

func TestClosedAndReadOnly(t *testing.T) {
	m := mem.New(4096)
	m.Close()
	if _, err := m.ReadAt(make([]byte, 1), 0); !errors.Is(err, block.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if _, err := m.WriteAt(make([]byte, 1), 0); !errors.Is(err, block.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
}

func TestMemProtocolAndFormat(t *testing.T) {
	img, err := block.Open("mem:1M", block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 1<<20 {
		t.Errorf("size %d", img.Size())
	}
	if _, err := block.Open("mem:lots", block.OpenOptions{}); err == nil {
		t.Error("mem:lots accepted")
	}
	if !block.IsVolatile("mem:1M") || block.IsVolatile("disk.img") {
		t.Error("IsVolatile does not single out mem: names")
	}
}

// The mem: container reads like a file: short at the end, an error (not
// a panic) before the start.
func TestMemContainerBounds(t *testing.T) {
	f, err := block.OpenFile("mem:1K", block.OpenFlags{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, 16)
	if n, err := f.ReadAt(p, -1); err == nil || n != 0 {
		t.Errorf("read at -1: %d, %v", n, err)
	}
	if n, err := f.ReadAt(p, 1020); n != 4 || !errors.Is(err, io.EOF) {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	if _, err := f.WriteAt(p, -1); err == nil {
		t.Error("write at -1 accepted")
	}
}

// TestCloseDuringIO closes a RAM disk while requests run: they may fail
// with ErrClosed but must not race with Close (run under -race).
func TestCloseDuringIO(t *testing.T) {
	for round := 0; round < 10; round++ {
		m := mem.New(1 << 20)
		var wg sync.WaitGroup
		started := make(chan struct{}, 4)
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				for i := 0; ; i++ {
					if i == 5 {
						started <- struct{}{}
					}
					off := int64(i%256) * 4096
					var err error
					if g%2 == 0 {
						_, err = m.WriteAt(buf, off)
					} else {
						_, err = m.ReadAt(buf, off)
					}
					if errors.Is(err, block.ErrClosed) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		for range 4 {
			<-started
		}
		m.Close()
		wg.Wait()
	}
}
