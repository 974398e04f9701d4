package yamlpos

import (
	"errors"
	"testing"
)

// FuzzUnmarshal checks that any input either decodes or yields a
// non-empty ErrorList with positions, without panicking.
func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte("name: a\ninner: {food: b, count: 3, tags: [x], env: {K: V}}\nwait: 1d\n"))
	f.Add([]byte("nmae: a\ninner: [1]\nwait: 3\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c cfg
		err := Unmarshal("f.yaml", data, &c)
		if err == nil {
			return
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("not a non-empty ErrorList: %T %v", err, err)
		}
		if len(list) > maxErrors+1 {
			t.Fatalf("%d errors, over the cap", len(list))
		}
		for _, e := range list {
			if e.File != "f.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Fatalf("error without a position: %#v", e)
			}
		}
	})
}
