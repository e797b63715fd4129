// A net/http ServeMux upstream (standard library only). Usage: goapp PORT NAME
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
)

const marker = "ADMIN-HANDLER-REACHED"

var name = "go-servemux"

func reply(w http.ResponseWriter, r *http.Request, handler string, status int) {
	headers := [][2]string{}
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			headers = append(headers, [2]string{k, v})
		}
	}
	body := map[string]interface{}{
		"framework":  name,
		"handler":    handler,
		"method":     r.Method,
		"path":       r.URL.Path,
		"raw_target": r.RequestURI,
		"query":      r.URL.RawQuery,
		"headers":    headers,
	}
	if handler == "admin" || handler == "item-delete" {
		body["marker"] = marker
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: goapp PORT [NAME]")
	}
	if len(os.Args) > 2 {
		name = os.Args[2]
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/public", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			reply(w, r, "not-found", http.StatusMethodNotAllowed)
			return
		}
		reply(w, r, "public", http.StatusOK)
	})
	admin := func(w http.ResponseWriter, r *http.Request) { reply(w, r, "admin", http.StatusOK) }
	mux.HandleFunc("/api/admin", admin)
	mux.HandleFunc("/api/admin/", admin)
	mux.HandleFunc("/api/items/", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodDelete:
			reply(w, r, "item-delete", http.StatusOK)
		case http.MethodPost:
			// Read the body first, as a handler that parses it would.
			if _, err := io.ReadAll(r.Body); err != nil {
				reply(w, r, "not-found", http.StatusBadRequest)
				return
			}
			reply(w, r, "item", http.StatusOK)
		case http.MethodGet, http.MethodHead:
			reply(w, r, "item", http.StatusOK)
		default:
			reply(w, r, "not-found", http.StatusMethodNotAllowed)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, r, "not-found", http.StatusNotFound)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Args[1], mux))
}
