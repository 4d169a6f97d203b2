package vhd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/block"
)

// memFile is an in-memory container for fuzzing; it refuses to grow past
// maxMemFile so that a hostile image cannot make a write allocate much.
type memFile struct {
	mu sync.Mutex
	b  []byte
}

const maxMemFile = 16 << 20

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	n := copy(p, f.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 || off+int64(len(p)) > maxMemFile {
		return 0, errors.New("memFile: too large")
	}
	if end := off + int64(len(p)); end > int64(len(f.b)) {
		f.b = append(f.b, make([]byte, end-int64(len(f.b)))...)
	}
	return copy(f.b[off:], p), nil
}

func (f *memFile) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.b)), nil
}
func (f *memFile) Truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n > maxMemFile {
		return errors.New("memFile: too large")
	}
	if n < int64(len(f.b)) {
		f.b = f.b[:n]
	} else {
		f.b = append(f.b, make([]byte, n-int64(len(f.b)))...)
	}
	return nil
}
func (f *memFile) Sync() error  { return nil }
func (f *memFile) Name() string { return "fuzz.vhd" }
func (f *memFile) Close() error { return nil }

// seedImage builds a small image in memory with some data written.
func seedImage(t testing.TB, opts block.Options) []byte {
	f := &memFile{}
	full, err := block.ParseOptions(Format.CreateOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range opts {
		full[k] = v
	}
	if err := create(f, full); err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img.WriteAt(bytes.Repeat([]byte{0xAB}, 100), 1000)
	img.WriteAt(bytes.Repeat([]byte{0xCD}, 10), 7000)
	img.Close()
	return f.b
}

type namedSeed struct {
	name string
	b    []byte
}

func seeds(t testing.TB) []namedSeed {
	diff := handImage(t, typeDifferencing, 32<<10, 4096, []locatorData{{platW2ru, encodeUTF16("parent.vhd", leUTF16)}}, nil)
	mf := &memFile{b: diff}
	img, err := Open(mf, &block.OpenOptions{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	img.WriteAt(bytes.Repeat([]byte{0xAB}, 100), 1000)
	img.WriteAt(bytes.Repeat([]byte{0xCD}, 5000), 7000)
	img.Close()
	return []namedSeed{
		{"seed0", seedImage(t, block.Options{"size": int64(16 << 10), "block_size": int64(4096), "force_size": true})},
		{"seed1", seedImage(t, block.Options{"size": int64(8 << 10), "subformat": "fixed", "force_size": true})},
		{"seed2", seedImage(t, block.Options{"size": int64(34 << 10), "block_size": int64(4096)})},
		{"diff-4k-block", mf.b},
		{"diff-tiny-block", tinyDifferencing(t, nil)},
	}
}

// TestWriteFuzzSeeds regenerates testdata/fuzz with VHD_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VHD_WRITE_SEEDS") == "" {
		return
	}
	for _, target := range []string{"FuzzOpenRead", "FuzzParseFooter", "FuzzParseHeader"} {
		dir := filepath.Join("testdata", "fuzz", target)
		os.MkdirAll(dir, 0o755)
		for _, sd := range seeds(t) {
			s := sd.b
			switch target {
			case "FuzzParseFooter":
				s = s[len(s)-footerSize:]
			case "FuzzParseHeader":
				if len(s) < footerSize+headerSize || string(s[:8]) != footerCookie {
					continue
				}
				s = s[footerSize : footerSize+headerSize]
			}
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, sd.name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func FuzzParseFooter(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		ft, err := parseFooter(b)
		if err != nil {
			return
		}
		if _, err := ft.virtualSize(); err != nil {
			return
		}
		back, err := parseFooter(ft.marshal())
		want := *ft
		if back != nil {
			want.Checksum = back.Checksum // reserved bytes are not kept
		}
		if err != nil || *back != want {
			t.Fatalf("footer does not round-trip: %v", err)
		}
	})
}

func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		h, _, err := parseHeader(b)
		if err != nil {
			return
		}
		for _, l := range h.Locators {
			locatorPath(string(l.Code[:]), b[min(len(b), 64):])
		}
		back, cerr, err := parseHeader(h.marshal())
		if err != nil || cerr != nil || back.BlockSize != h.BlockSize || back.MaxEntries != h.MaxEntries {
			t.Fatalf("header does not round-trip: %v %v", err, cerr)
		}
	})
}

// FuzzOpenRead opens a mutated image, reads, maps, writes and checks it.
// Differencing images are opened without their parent, so no file outside
// the fuzzer's input is touched.
func FuzzOpenRead(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxMemFile {
			return
		}
		mf := &memFile{b: append([]byte(nil), b...)}
		img, err := Open(mf, &block.OpenOptions{NoBacking: true})
		if err != nil {
			return
		}
		defer img.Close()
		exercise(t, img)
	})
}

// exercise reads, maps, writes, describes and repairs an opened image.
func exercise(t *testing.T, img block.Image) {
	size := img.Size()
	buf := make([]byte, 8192)
	for _, off := range []int64{0, size / 3, size - 8192} {
		if off < 0 || off+8192 > size {
			continue
		}
		img.ReadAt(buf, off)
		img.BlockStatus(off, 8192)
	}
	if _, err := block.MapChain(img, 0, min(size, 1<<20)); err != nil {
		return
	}
	if size >= 4096 && !img.ReadOnly() {
		p := bytes.Repeat([]byte{0x5A}, 1500)
		if _, err := img.WriteAt(p, size/2-700); err == nil {
			got := make([]byte, len(p))
			if _, err := img.ReadAt(got, size/2-700); err == nil && !bytes.Equal(got, p) {
				t.Fatal("read after write differs")
			}
		}
	}
	img.Info()
	if c, ok := img.(block.Checker); ok {
		c.Check(block.RepairAll)
	}
}
