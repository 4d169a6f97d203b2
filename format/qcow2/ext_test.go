package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"vdisk/block"
)

// A header extension the driver does not know survives header rewrites
// (a resize, then writes), byte for byte and in place among the others.
func TestUnknownHeaderExtensionPreserved(t *testing.T) {
	name := filepath.Join(t.TempDir(), "u.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", name, "4M")
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	off := int(binary.BigEndian.Uint32(b[100:]))
	for binary.BigEndian.Uint32(b[off:]) != 0 {
		off += 8 + int((binary.BigEndian.Uint32(b[off+4:])+7)&^7)
	}
	ext := binary.BigEndian.AppendUint32(nil, 0x12345678)
	ext = binary.BigEndian.AppendUint32(ext, 5)
	ext = append(ext, "hello\x00\x00\x00"...)
	poke(t, name, int64(off), append(ext, make([]byte, 8)...))

	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.(block.Resizer).Resize(64<<20, false); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	if out := run(t, "qemu-img", "info", name); !bytes.Contains([]byte(out), []byte("virtual size: 64 MiB")) {
		t.Fatalf("resize lost: %s", out)
	}
	b, err = os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.Index(b[:4096], ext); i != off {
		t.Fatalf("unknown extension at %d after the rewrite, want %d", i, off)
	}
}
