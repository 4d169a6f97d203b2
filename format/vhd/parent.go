package vhd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"vdisk/block"
)

// candidate is a parent path found in the header, with where it came from.
type candidate struct {
	from, path string
}

// parentCandidates lists the parent paths the header offers, in the order
// to try them: the relative locator first (it survives moving the pair of
// files), then the absolute ones, then the bare parent name.
func (m *Image) parentCandidates() ([]candidate, error) {
	fsize, err := m.f.Size()
	if err != nil {
		return nil, err
	}
	var out []candidate
	for _, want := range []string{platW2ru, platW2ku, platMacX} {
		for i, l := range m.hdr.Locators {
			if string(l.Code[:]) != want || l.DataLen == 0 {
				continue
			}
			if l.DataLen > maxLocatorData || l.DataOff > uint64(fsize) || int64(l.DataOff) > fsize-int64(l.DataLen) {
				return nil, fmt.Errorf("parent locator %d (%s): %d bytes at %#x are outside the file", i, want, l.DataLen, l.DataOff)
			}
			data := make([]byte, l.DataLen)
			if err := readFull(m.f, data, int64(l.DataOff)); err != nil {
				return nil, fmt.Errorf("parent locator %d (%s): %w", i, want, err)
			}
			if p := locatorPath(want, data); p != "" {
				out = append(out, candidate{want + " locator", p})
			}
		}
	}
	if n := m.hdr.ParentName; n != "" {
		out = append(out, candidate{"parent name", fromWindowsPath(n)})
	}
	return out, nil
}

// openParent finds and opens the parent through the locators and checks
// that it is the disk this one was made from.
func (m *Image) openParent(opts *block.OpenOptions) error {
	cands, err := m.parentCandidates()
	if err != nil {
		return fmt.Errorf("vhd: differencing disk %s: %w", m.name, err)
	}
	if len(cands) == 0 {
		return fmt.Errorf("vhd: differencing disk %s has no parent locator or parent name", m.name)
	}
	var tried []string
	for _, c := range cands {
		full := block.ResolveBacking(m.name, c.path)
		if !present(full) {
			tried = append(tried, fmt.Sprintf("%s '%s'", c.from, full))
			continue
		}
		p, err := block.OpenBacking(m.name, c.path, "vhd", opts)
		var ce *chainError
		if errors.As(err, &ce) {
			return ce
		}
		if err != nil && strings.Contains(err.Error(), "backing chain deeper than") {
			return &chainError{fmt.Sprintf("vhd: differencing disk %s: parent chain through %s is deeper than %d images", m.name, full, block.MaxBackingDepth)}
		}
		if err != nil {
			return fmt.Errorf("vhd: differencing disk %s: parent from %s '%s': %w", m.name, c.from, full, err)
		}
		if err := m.verifyParent(p, full); err != nil {
			p.Close()
			return err
		}
		m.parent, m.parentName, m.parentFull, m.parentFrom = p, c.path, full, c.from
		return nil
	}
	return fmt.Errorf("vhd: differencing disk %s: parent not found; tried %s", m.name, strings.Join(tried, ", "))
}

// present reports whether a parent candidate is worth opening: a local
// file that exists, or a name of another protocol.
func present(full string) bool {
	if !block.IsLocalName(full) {
		return true
	}
	_, err := os.Stat(full)
	return err == nil
}

// locateParent names, without opening it, the parent that opening the
// chain would try first (the first candidate present, else the first
// candidate), so that info shows the backing file of a differencing disk
// opened without its chain. A locator that cannot be read leaves it
// unnamed; opening the chain reports that.
func (m *Image) locateParent() {
	cands, err := m.parentCandidates()
	if err != nil || len(cands) == 0 {
		return
	}
	pick := cands[0]
	for _, c := range cands {
		if present(block.ResolveBacking(m.name, c.path)) {
			pick = c
			break
		}
	}
	m.parentName, m.parentFull, m.parentFrom = pick.path, block.ResolveBacking(m.name, pick.path), pick.from
}

func (m *Image) verifyParent(p block.Image, full string) error {
	pv, ok := p.(*Image)
	if !ok {
		return fmt.Errorf("vhd: differencing disk %s: parent %s is not a VHD", m.name, full)
	}
	if !bytes.Equal(pv.footer.UniqueID[:], m.hdr.ParentUUID[:]) {
		return fmt.Errorf("vhd: differencing disk %s expects a parent with unique id %s, but %s has %s",
			m.name, uuidString(m.hdr.ParentUUID), full, uuidString(pv.footer.UniqueID))
	}
	// Hyper-V leaves the parent time stamp 0; only a recorded one is checked.
	if m.hdr.ParentTimestamp != 0 && pv.footer.Timestamp != m.hdr.ParentTimestamp {
		return fmt.Errorf("vhd: differencing disk %s expects a parent with time stamp %d, but %s has %d (the parent changed since the child was made)",
			m.name, m.hdr.ParentTimestamp, full, pv.footer.Timestamp)
	}
	return nil
}

// chainError reports a parent chain that is too deep or loops. It passes
// up through every level unchanged, so the message is not repeated once
// per image of the chain.
type chainError struct{ msg string }

func (e *chainError) Error() string { return e.msg }
