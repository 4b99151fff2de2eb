--- helpers.tls: certificates for the TLS tests, made with the openssl command.
--
--   local certs = tls.make(dir)
--   certs.ca, certs.server_cert, certs.server_key   -- a CA and a server certificate for
--                                                   -- 127.0.0.1 and localhost
--   certs.client_cert, certs.client_key             -- a client certificate (mutual TLS)
--   certs.other_ca                                  -- a CA that signed none of them

local proc = require("helpers.proc")

local M = {}

local function run(cmd)
    local out, ok = proc.sh(cmd)
    assert(ok, cmd .. ": " .. out)
end

function M.make(dir)
    local p = function(name) return dir .. "/" .. name end
    local q = proc.quote
    local subj = function(cn) return q("/CN=" .. cn) end
    -- Two CAs: the one that signs, and one that signed nothing here.
    for _, ca in ipairs({ "ca", "other_ca" }) do
        run(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj %s -keyout %s -out %s")
            :format(subj("binduq test " .. ca), q(p(ca .. ".key")), q(p(ca .. ".crt"))))
    end
    local ext = p("san.ext")
    proc.write(ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for _, who in ipairs({ "server", "client" }) do
        run(("openssl req -newkey rsa:2048 -nodes -subj %s -keyout %s -out %s")
            :format(subj(who == "server" and "localhost" or "binduq-client"), q(p(who .. ".key")),
                    q(p(who .. ".csr"))))
        run(("openssl x509 -req -days 2 -in %s -CA %s -CAkey %s -CAcreateserial -out %s %s")
            :format(q(p(who .. ".csr")), q(p("ca.crt")), q(p("ca.key")), q(p(who .. ".crt")),
                    who == "server" and ("-extfile " .. q(ext)) or ""))
    end
    return { ca = p("ca.crt"), other_ca = p("other_ca.crt"), server_cert = p("server.crt"),
             server_key = p("server.key"), client_cert = p("client.crt"), client_key = p("client.key") }
end

return M
