package silly_test

import (
	"bytes"
	"os"
	"testing"

	"vdisk/block"
	_ "vdisk/examples/silly"
	_ "vdisk/format/raw"
	_ "vdisk/protocol/file"
)

func TestSilly(t *testing.T) {
	name := t.TempDir() + "/a.silly"
	opts, err := block.ParseOptions([]block.OptionSpec{{Name: "size", Type: block.OptSize}}, [][2]string{{"size", "1M"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Create(name, "silly", opts); err != nil {
		t.Fatal(err)
	}
	// Probing finds the format; no -f needed.
	img, err := block.Open(name, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if in, _ := img.Info(); in.Format != "silly" || img.Size() != 1<<20 {
		t.Fatalf("opened as %s, size %d", in.Format, img.Size())
	}
	data := bytes.Repeat([]byte("silly!"), 100)
	if _, err := img.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(data, img.Size()-10); err == nil {
		t.Error("write past the end accepted")
	}
	got := make([]byte, len(data))
	img.ReadAt(got, 4096)
	if !bytes.Equal(got, data) {
		t.Error("read back differs")
	}
	exts, err := block.MapChain(img, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	var data0 int64 = -1
	for _, e := range exts {
		if e.Status&block.StatusData != 0 && e.Status&block.StatusZero == 0 {
			data0 = e.HostOffset - e.Offset
		}
	}
	if data0 != 512 {
		t.Errorf("data not mapped 512 bytes into the file: %v", exts)
	}
	img.Close()
	// The bytes sit in the file after the 512-byte header.
	raw, _ := os.ReadFile(name)
	if !bytes.Equal(raw[512+4096:512+4096+len(data)], data) {
		t.Error("data not at the expected file offset")
	}
}

func TestSillyDistrustsHeader(t *testing.T) {
	name := t.TempDir() + "/bad.silly"
	h := make([]byte, 512)
	copy(h, "SILLY\x00\x00\x01")
	h[8] = 0x7f // claims an enormous disk in a 512-byte file
	os.WriteFile(name, h, 0o644)
	if _, err := block.Open(name, block.OpenOptions{Format: "silly", ReadOnly: true}); err == nil {
		t.Error("opened an image whose header lies about its size")
	}
	os.WriteFile(name, make([]byte, 1024), 0o644)
	if _, err := block.Open(name, block.OpenOptions{Format: "silly", ReadOnly: true}); err == nil {
		t.Error("opened a file without the magic")
	}
}
