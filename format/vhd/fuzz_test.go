package vhd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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

// fuzzParent is the fixed parent of FuzzOpenChain: a dynamic disk with data
// and a unique id and time stamp that do not change between runs, so that
// the stored seeds stay its children.
func fuzzParent(t testing.TB) []byte {
	b := seedImage(t, block.Options{"size": int64(32 << 10), "block_size": int64(4096), "force_size": true})
	ft, err := parseFooter(b[len(b)-footerSize:])
	if err != nil {
		t.Fatal(err)
	}
	ft.UniqueID = [16]byte{0x76, 0x64, 0x69, 0x73, 0x6b, 0x20, 0x66, 0x75, 0x7a, 0x7a, 0x20, 0x70, 0x61, 0x72, 0x65, 0x6e}
	ft.Timestamp = 0x2d000000
	fb := ft.marshal()
	copy(b, fb)
	copy(b[len(b)-footerSize:], fb)
	return b
}

// chainSeeds are children of fuzzParent as they sit next to it, written
// through the chain.
func chainSeeds(t testing.TB) []namedSeed {
	dir := t.TempDir()
	parent := fuzzParent(t)
	pf, err := parseFooter(parent[len(parent)-footerSize:])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "parent.vhd"), parent, 0o644); err != nil {
		t.Fatal(err)
	}
	locs := []locatorData{
		{platW2ru, encodeUTF16("parent.vhd", leUTF16)},
		{platW2ku, encodeUTF16("missing.vhd", leUTF16)},
		{platMacX, []byte("parent.vhd")},
	}
	child := handImage(t, typeDifferencing, 32<<10, 4096, locs, pf)
	name := filepath.Join(dir, "child.vhd")
	if err := os.WriteFile(name, child, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "vhd"})
	if err != nil {
		t.Fatal(err)
	}
	img.WriteAt(bytes.Repeat([]byte{0x11}, 700), 900)
	img.WriteAt(bytes.Repeat([]byte{0x22}, 6000), 9000)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if child, err = os.ReadFile(name); err != nil {
		t.Fatal(err)
	}
	return []namedSeed{{"child-4k-block", child}, {"child-tiny-block", tinyDifferencing(t, pf)}}
}

// TestWriteFuzzSeeds regenerates testdata/fuzz with VHD_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VHD_WRITE_SEEDS") == "" {
		return
	}
	for _, target := range []string{"FuzzOpenRead", "FuzzParseFooter", "FuzzParseHeader", "FuzzOpenChain"} {
		dir := filepath.Join("testdata", "fuzz", target)
		os.MkdirAll(dir, 0o755)
		all := seeds(t)
		if target == "FuzzOpenChain" {
			all = chainSeeds(t)
		}
		for _, sd := range all {
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
// the fuzzer's input is touched; FuzzOpenChain follows parents.
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

// FuzzOpenChain opens the mutated image as a differencing disk next to a
// fixed parent in a temporary directory, so that the locators, the parent
// checks and reads and writes through the chain are fuzzed. Only images
// whose every parent candidate lies in that directory are opened, and the
// parent's file must never change.
func FuzzOpenChain(f *testing.F) {
	dir := f.TempDir()
	parent := fuzzParent(f)
	pname, cname := filepath.Join(dir, "parent.vhd"), filepath.Join(dir, "child.vhd")
	if err := os.WriteFile(pname, parent, 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxMemFile {
			return
		}
		img, err := Open(&memFile{b: append([]byte(nil), b...)}, &block.OpenOptions{NoBacking: true, ReadOnly: true})
		if err != nil {
			return
		}
		m := img.(*Image)
		var cands []candidate
		if m.dtype == typeDifferencing {
			cands, err = m.parentCandidates()
		}
		img.Close()
		if err != nil {
			return
		}
		for _, c := range cands {
			rel, err := filepath.Rel(dir, block.ResolveBacking(cname, c.path))
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || !block.IsLocalName(c.path) {
				return
			}
		}
		if err := os.WriteFile(cname, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if img, err := block.Open(cname, block.OpenOptions{Format: "vhd"}); err == nil {
			exercise(t, img)
			img.Close()
		}
		if got, err := os.ReadFile(pname); err != nil || !bytes.Equal(got, parent) {
			t.Fatalf("the parent's file changed (%v)", err)
		}
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
