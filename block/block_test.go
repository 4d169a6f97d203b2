package block_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"vdisk/block"
	"vdisk/format/mem"
	_ "vdisk/format/raw"
	_ "vdisk/protocol/file"
)

// testMagic is what the fake format below probes for.
var testMagic = []byte("TSTFMT\x01")

func init() {
	block.Register(&block.Format{
		Name:    "blocktest",
		Aliases: []string{"bt"},
		Probe: func(head, tail []byte, name string) int {
			if bytes.HasPrefix(head, testMagic) {
				return 100
			}
			return 0
		},
	})
	block.Register(&block.Format{
		Name: "blocktail",
		Probe: func(head, tail []byte, name string) int {
			if bytes.HasSuffix(tail, []byte("TAILMARK")) {
				return 50
			}
			return 0
		},
	})
}

func TestRegistryLookup(t *testing.T) {
	for _, n := range []string{"raw", "mem", "blocktest", "bt"} {
		if _, err := block.Lookup(n); err != nil {
			t.Errorf("Lookup(%q): %v", n, err)
		}
	}
	if f, _ := block.Lookup("bt"); f.Name != "blocktest" {
		t.Errorf("alias resolved to %s", f.Name)
	}
	_, err := block.Lookup("nosuch")
	if !errors.Is(err, block.ErrUnknownFormat) || !strings.Contains(err.Error(), "nosuch") || !strings.Contains(err.Error(), "raw") {
		t.Errorf("unknown format error: %v", err)
	}
	names := block.Formats()
	for i := 1; i < len(names); i++ {
		if names[i-1] > names[i] {
			t.Errorf("Formats not sorted: %v", names)
		}
	}
}

func TestRegisterDuplicatePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("registering a duplicate name did not panic")
		}
	}()
	block.Register(&block.Format{Name: "raw"})
}

func TestProbe(t *testing.T) {
	head := append(append([]byte{}, testMagic...), make([]byte, 100)...)
	if f, score := block.Probe(head, nil, "x"); f.Name != "blocktest" || score != 100 {
		t.Errorf("magic: %s %d", f.Name, score)
	}
	if f, _ := block.Probe(make([]byte, 512), []byte("...TAILMARK"), "x"); f.Name != "blocktail" {
		t.Errorf("tail probe: %s", f.Name)
	}
	// Nothing else matches: raw, which scores 1.
	if f, _ := block.Probe(make([]byte, 512), make([]byte, 512), "x"); f.Name != "raw" {
		t.Errorf("fallback: %s", f.Name)
	}
	if f, _ := block.Probe(nil, nil, "empty"); f.Name != "raw" {
		t.Errorf("empty container: %s", f.Name)
	}
}

func TestSplitOptionString(t *testing.T) {
	cases := []struct {
		in   string
		want [][2]string
	}{
		{"", nil},
		{"a=b", [][2]string{{"a", "b"}}},
		{"a=b,c=d", [][2]string{{"a", "b"}, {"c", "d"}}},
		{"backing_file=x,,y.img,size=1M", [][2]string{{"backing_file", "x,y.img"}, {"size", "1M"}}},
		{"a=,,,,", [][2]string{{"a", ",,"}}},
		{"lazy_refcounts,help", [][2]string{{"lazy_refcounts", ""}, {"help", ""}}},
		{"a=b,,", [][2]string{{"a", "b,"}}},
		{",a=1,", [][2]string{{"a", "1"}}},
		{"k=v=w", [][2]string{{"k", "v=w"}}},
	}
	for _, c := range cases {
		got, err := block.SplitOptionString(c.in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%q: %v %v, want %v", c.in, got, err, c.want)
		}
	}
	if _, err := block.SplitOptionString("=x"); err == nil {
		t.Error("empty name accepted")
	}
}

func TestParseOptions(t *testing.T) {
	specs := []block.OptionSpec{
		{Name: "size", Type: block.OptSize},
		{Name: "lazy", Type: block.OptBool, Default: "off"},
		{Name: "bits", Type: block.OptNumber, Default: "16"},
		{Name: "name", Type: block.OptString},
	}
	o, err := block.ParseOptions(specs, [][2]string{{"size", "1M"}, {"lazy", ""}, {"name", "a,b"}})
	if err != nil {
		t.Fatal(err)
	}
	if o.Size("size", 0) != 1<<20 || !o.Bool("lazy", false) || o.Size("bits", 0) != 16 || o.String("name", "") != "a,b" {
		t.Errorf("parsed %v", o)
	}
	if o.Has("nope") || !o.Has("bits") {
		t.Error("Has")
	}
	o, _ = block.ParseOptions(specs, nil)
	if o.Bool("lazy", true) || o.Has("size") {
		t.Errorf("defaults: %v", o)
	}
	for _, bad := range [][2]string{{"size", "x"}, {"lazy", "maybe"}, {"bits", "ten"}, {"color", "red"}} {
		if _, err := block.ParseOptions(specs, [][2]string{bad}); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	// Off-spellings of booleans.
	for _, v := range []string{"off", "false", "no", "OFF"} {
		if o, err := block.ParseOptions(specs, [][2]string{{"lazy", v}}); err != nil || o.Bool("lazy", true) {
			t.Errorf("lazy=%s: %v %v", v, o, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "512": 512, "1k": 1024, "1K": 1024, "10M": 10 << 20, "2G": 2 << 30, "1T": 1 << 40,
		"1P": 1 << 50, "1E": 1 << 60, "1.5k": 1536, "0.5M": 512 << 10, "100b": 100, "100B": 100, " 4k ": 4096,
		"9223372036854775807": 1<<63 - 1,
	}
	for s, want := range good {
		if got, err := block.ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "k", "-1", "+1", "1X", "abc", "1.3", "8E", "9223372036854775808", "0x10", "--1"} {
		if n, err := block.ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", s, n)
		}
	}
}

// Expected strings are qemu-img 7.2's "virtual size" for these sizes.
func TestFormatSizeMatchesQEMU(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {512, "512 B"}, {1024, "1 KiB"}, {1536, "1.5 KiB"}, {10240, "10 KiB"},
		{1000448, "977 KiB"}, {1022976, "999 KiB"}, {1023488, "1e+03 KiB"}, {1048064, "1 MiB"},
		{1048576, "1 MiB"}, {10485760, "10 MiB"}, {104857600, "100 MiB"}, {999999488, "954 MiB"},
		{1610612736, "1.5 GiB"}, {5000000000, "4.66 GiB"}, {107374182400, "100 GiB"},
		{1099511627776, "1 TiB"}, {3298534883328, "3 TiB"},
	} {
		if got := block.FormatSize(c.n); got != c.want {
			t.Errorf("FormatSize(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

func TestCheckRange(t *testing.T) {
	for _, c := range []struct {
		off, n, size int64
		ok           bool
	}{
		{0, 0, 0, true}, {0, 10, 10, true}, {10, 0, 10, true}, {5, 6, 10, false}, {-1, 1, 10, false},
		{0, -1, 10, false}, {11, 0, 10, false}, {1<<63 - 1, 1<<63 - 1, 10, false},
	} {
		err := block.CheckRange(c.off, c.n, c.size)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, block.ErrOutOfRange)) {
			t.Errorf("CheckRange(%d, %d, %d) = %v", c.off, c.n, c.size, err)
		}
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{4095, 4096, 4097, 8192, 12289} {
		b := make([]byte, n)
		if !block.IsZero(b) {
			t.Fatalf("zero buffer of %d not zero", n)
		}
		for _, i := range []int{0, 1, 4094, 4095, 4096, 8191, n - 1} {
			if i >= n {
				continue
			}
			b[i] = 0x80
			if block.IsZero(b) {
				t.Fatalf("byte %d of %d set but IsZero", i, n)
			}
			b[i] = 0
		}
	}
	for n := 0; n < 40; n++ {
		b := make([]byte, n)
		if !block.IsZero(b) {
			t.Fatalf("zero buffer of %d not zero", n)
		}
		for i := 0; i < n; i++ {
			b[i] = 1
			if block.IsZero(b) {
				t.Fatalf("byte %d of %d set but IsZero", i, n)
			}
			b[i] = 0
		}
	}
}

// layer is a fake image for MapChain: a fixed list of extents over its
// size and an optional backing image.
type layer struct {
	*mem.Image
	exts []block.Extent
	back block.Image
}

func (l *layer) Backing() block.Image { return l.back }

func (l *layer) BlockStatus(off, n int64) ([]block.Extent, error) {
	for _, e := range l.exts {
		if off >= e.Offset && off < e.Offset+e.Length {
			// Answer one extent at a time, clipped, as drivers may.
			d := off - e.Offset
			e.Offset, e.Length = off, min(e.Length-d, n)
			if e.HostOffset >= 0 {
				e.HostOffset += d
			}
			return []block.Extent{e}, nil
		}
	}
	return nil, fmt.Errorf("no extent at %d", off)
}

const unalloc = block.Status(0)

func ext(off, n int64, st block.Status, host int64) block.Extent {
	return block.Extent{Offset: off, Length: n, Status: st, HostOffset: host}
}

func TestMapChainThroughBacking(t *testing.T) {
	const k = 1024
	base := &layer{Image: mem.New(64 * k), exts: []block.Extent{
		ext(0, 16*k, block.StatusData, 0x10000),
		ext(16*k, 16*k, unalloc, -1),
		ext(32*k, 32*k, block.StatusData, 0x20000),
	}}
	mid := &layer{Image: mem.New(64 * k), back: base, exts: []block.Extent{
		ext(0, 8*k, block.StatusZero, -1),
		ext(8*k, 56*k, unalloc, -1),
	}}
	top := &layer{Image: mem.New(96 * k), back: mid, exts: []block.Extent{
		ext(0, 4*k, block.StatusData, 0x50000),
		ext(4*k, 4*k, block.StatusData, 0x51000), // contiguous: merges with the one before
		ext(8*k, 88*k, unalloc, -1),
	}}
	got, err := block.MapChain(top, 0, 96*k)
	if err != nil {
		t.Fatal(err)
	}
	A := block.StatusAllocated
	want := []block.Extent{
		{Offset: 0, Length: 8 * k, Status: block.StatusData | A, HostOffset: 0x50000, Depth: 0},
		{Offset: 8 * k, Length: 8 * k, Status: block.StatusData | A, HostOffset: 0x10000 + 8*k, Depth: 2},
		{Offset: 16 * k, Length: 16 * k, Status: block.StatusZero, HostOffset: -1, Depth: 2},
		{Offset: 32 * k, Length: 32 * k, Status: block.StatusData | A, HostOffset: 0x20000, Depth: 2},
		// Beyond the end of the shorter backing file the top layer itself
		// reads zeros without allocating them, as QEMU reports it.
		{Offset: 64 * k, Length: 32 * k, Status: block.StatusZero, HostOffset: -1, Depth: 0},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("MapChain:\n got %v\nwant %v", got, want)
	}
	// Zero from the middle layer at depth 1 overrides base data.
	got, _ = block.MapChain(top, 0, 16*k)
	if len(got) != 2 || got[1].Depth != 2 {
		t.Errorf("partial map: %v", got)
	}
	got, _ = block.MapChain(mid, 0, 8*k)
	if len(got) != 1 || got[0].Status != block.StatusZero|A || got[0].Depth != 0 {
		t.Errorf("zero layer: %v", got)
	}
}

func TestMapChainRejectsBadDriverAnswers(t *testing.T) {
	bad := &layer{Image: mem.New(4096), exts: []block.Extent{ext(0, 8192, block.StatusData, 0)}}
	bad.exts[0].Offset = 100
	if _, err := block.MapChain(bad, 0, 4096); err == nil {
		t.Error("extent at the wrong offset accepted")
	}
}

type dataMapFile struct {
	block.File
	holes []block.Extent
}

func (d *dataMapFile) MapData(off, n int64) ([]block.Extent, error) {
	var out []block.Extent
	for _, h := range d.holes {
		if h.Offset+h.Length <= off || h.Offset >= off+n {
			continue
		}
		s, e := max(h.Offset, off), min(h.Offset+h.Length, off+n)
		out = append(out, block.Extent{Offset: s, Length: e - s, Status: h.Status, HostOffset: s})
	}
	return out, nil
}

func TestRefineZero(t *testing.T) {
	f := &dataMapFile{holes: []block.Extent{
		{Offset: 0, Length: 0x1000, Status: block.StatusData},
		{Offset: 0x1000, Length: 0x3000, Status: block.StatusZero},
		{Offset: 0x4000, Length: 0x10000, Status: block.StatusData},
	}}
	in := []block.Extent{
		ext(0, 0x2000, block.StatusData, 0x3000),  // host 0x3000-0x5000: hole then data
		ext(0x2000, 0x1000, block.StatusZero, -1), // untouched
		ext(0x3000, 0x1000, block.StatusData, 0),  // host 0-0x1000: data
	}
	got, err := block.RefineZero(f, in)
	if err != nil {
		t.Fatal(err)
	}
	want := []block.Extent{
		ext(0, 0x1000, block.StatusData|block.StatusZero, 0x3000),
		ext(0x1000, 0x1000, block.StatusData, 0x4000),
		ext(0x2000, 0x1000, block.StatusZero, -1),
		ext(0x3000, 0x1000, block.StatusData, 0),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("RefineZero:\n got %v\nwant %v", got, want)
	}
	// A container without DataMapper leaves extents alone.
	plain := struct{ block.File }{}
	if got, _ := block.RefineZero(plain, in); fmt.Sprint(got) != fmt.Sprint(in) {
		t.Errorf("no DataMapper changed extents: %v", got)
	}
}

func TestOrderedMapJSON(t *testing.T) {
	m := block.OrderedMap{}.Add("z", 1).Add("a", "x").Add("m", block.OrderedMap{}.Add("k", true))
	j, err := m.MarshalJSON()
	if err != nil || string(j) != `{"z":1,"a":"x","m":{"k":true}}` {
		t.Errorf("%s %v", j, err)
	}
	if v, ok := m.Get("a"); !ok || v != "x" {
		t.Error("Get")
	}
}

func TestOpenProbesAndFallsBackToRaw(t *testing.T) {
	dir := t.TempDir()
	plain := dir + "/plain.img"
	if err := block.Create(plain, "raw", block.Options{"size": int64(4096)}); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(plain, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := img.Info()
	img.Close()
	if in.Format != "raw" || in.VirtualSize != 4096 {
		t.Errorf("probed %+v", in)
	}
	magic := dir + "/magic.img"
	if err := block.Create(magic, "raw", block.Options{"size": int64(4096)}); err != nil {
		t.Fatal(err)
	}
	w, err := block.Open(magic, block.OpenOptions{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt(testMagic, 0)
	w.Close()
	// Probing now picks the fake format, which cannot open images.
	if _, err := block.Open(magic, block.OpenOptions{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "blocktest") {
		t.Errorf("probing the magic: %v", err)
	}
	// An explicit format always wins over probing.
	if img, err := block.Open(magic, block.OpenOptions{Format: "raw", ReadOnly: true}); err != nil {
		t.Errorf("-f raw: %v", err)
	} else {
		img.Close()
	}
	if _, err := block.Open(magic, block.OpenOptions{Format: "nosuch"}); !errors.Is(err, block.ErrUnknownFormat) || !strings.Contains(err.Error(), magic) {
		t.Errorf("unknown format: %v", err)
	}
	if _, err := block.Open(dir+"/missing", block.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

func TestFailedCreateLeavesNoFile(t *testing.T) {
	name := t.TempDir() + "/bad.img"
	err := block.Create(name, "raw", block.Options{"size": int64(4096), "preallocation": "bogus"})
	if err == nil {
		t.Fatal("bad preallocation accepted")
	}
	if _, serr := os.Stat(name); !os.IsNotExist(serr) {
		t.Errorf("failed create left %s behind (%v)", name, serr)
	}
	if err := block.Create(name, "blocktest", nil); err == nil || !strings.Contains(err.Error(), "does not support image creation") {
		t.Errorf("create of a format without Create: %v", err)
	}
}

// A format whose Create fails after writing, and whose CheckCreate
// refuses a size of 13, to see what block.Create leaves behind.
func init() {
	block.Register(&block.Format{
		Name: "createtest",
		CheckCreate: func(name string, opts block.Options) (int64, error) {
			if opts.Size("size", 0) == 13 {
				return 0, errors.New("createtest: size 13 refused")
			}
			return opts.Size("size", 0), nil
		},
		Create: func(f block.File, opts block.Options) error {
			f.WriteAt([]byte("partial"), 0)
			return errors.New("createtest: failed half way")
		},
	})
}

func TestFailedCreateKeepsExistingFile(t *testing.T) {
	dir := t.TempDir()
	name := dir + "/old.img"
	old := []byte("old content that must survive")
	if err := os.WriteFile(name, old, 0o644); err != nil {
		t.Fatal(err)
	}
	// Refused by CheckCreate: the file is not even opened for writing.
	err := block.Create(name, "createtest", block.Options{"size": int64(13)})
	if err == nil || !strings.Contains(err.Error(), "size 13 refused") || !strings.Contains(err.Error(), name) {
		t.Errorf("CheckCreate refusal: %v", err)
	}
	// Refused by the raw driver's checks.
	if err := block.Create(name, "raw", block.Options{"size": int64(4096), "preallocation": "bogus"}); err == nil {
		t.Error("bad preallocation accepted")
	}
	if got, _ := os.ReadFile(name); !bytes.Equal(got, old) {
		t.Errorf("a refused create changed the existing file to %q", got)
	}
	// A create that fails in the driver replaces the old content (as
	// qemu-img does) but a new file it made is removed.
	if err := block.Create(dir+"/new.img", "createtest", block.Options{"size": int64(4096)}); err == nil || !strings.Contains(err.Error(), "half way") {
		t.Errorf("failing Create: %v", err)
	}
	if _, err := os.Stat(dir + "/new.img"); !os.IsNotExist(err) {
		t.Errorf("failed create left new.img behind (%v)", err)
	}
}
