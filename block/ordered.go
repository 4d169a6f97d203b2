package block

import (
	"bytes"
	"encoding/json"
)

// KV is one field of an OrderedMap.
type KV struct {
	Key   string
	Value any
}

// OrderedMap is a JSON object that keeps its keys in the order they were
// added, so human and JSON output list format-specific fields the way
// qemu-img does rather than alphabetically.
type OrderedMap []KV

// Add appends a field and returns the map, for chaining.
func (m OrderedMap) Add(key string, value any) OrderedMap { return append(m, KV{key, value}) }

// Get returns the value stored under key.
func (m OrderedMap) Get(key string) (any, bool) {
	for _, kv := range m {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// MarshalJSON writes the fields in order.
func (m OrderedMap) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, kv := range m {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(kv.Key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(kv.Value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}
