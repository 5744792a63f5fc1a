// Ward's WebAuthn ceremonies: the only JavaScript Ward needs. Buttons carry
// data-passkey="register|mfa|login", the page's CSRF token and where to go next.
(function () {
  "use strict";

  function decode(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var raw = atob(b64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }

  function encode(buffer) {
    var bytes = new Uint8Array(buffer), raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (!response.ok) throw new Error(json.error_description || "Something went wrong.");
        return json;
      });
    });
  }

  function creationOptions(options) {
    var pk = options.publicKey;
    pk.challenge = decode(pk.challenge);
    pk.user.id = decode(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = decode(c.id); });
    return options;
  }

  function requestOptions(options) {
    var pk = options.publicKey;
    pk.challenge = decode(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = decode(c.id); });
    return options;
  }

  function credentialJson(credential) {
    var r = credential.response;
    var out = {
      id: credential.id,
      rawId: encode(credential.rawId),
      type: credential.type,
      extensions: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: { clientDataJSON: encode(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = encode(r.attestationObject);
    } else {
      out.response.authenticatorData = encode(r.authenticatorData);
      out.response.signature = encode(r.signature);
      out.response.userHandle = r.userHandle ? encode(r.userHandle) : null;
    }
    return out;
  }

  var flows = {
    register: function (button) {
      var nameField = document.getElementById("passkey-name");
      var name = nameField ? nameField.value : "";
      return post("/account/passkeys/register/start", { csrf: button.dataset.csrf })
        .then(function (start) {
          return navigator.credentials.create(creationOptions(start.options)).then(function (credential) {
            return post("/account/passkeys/register/finish", {
              csrf: button.dataset.csrf, challenge_id: start.challenge_id, name: name,
              credential: credentialJson(credential)
            });
          });
        });
    },
    mfa: function (button) { return authenticate(button, "/login/passkey/mfa"); },
    login: function (button) { return authenticate(button, "/login/passkey"); }
  };

  function authenticate(button, base) {
    return post(base + "/start", { csrf: button.dataset.csrf }).then(function (start) {
      return navigator.credentials.get(requestOptions(start.options)).then(function (credential) {
        return post(base + "/finish", {
          csrf: button.dataset.csrf, challenge_id: start.challenge_id,
          return_to: button.dataset.returnTo || null, credential: credentialJson(credential)
        });
      });
    });
  }

  document.querySelectorAll("[data-passkey]").forEach(function (button) {
    if (!window.PublicKeyCredential) { button.hidden = true; return; }
    button.addEventListener("click", function () {
      var status = document.getElementById("passkey-status");
      var flow = flows[button.dataset.passkey];
      if (!flow) return;
      button.disabled = true;
      if (status) status.textContent = "Waiting for your passkey…";
      flow(button).then(function (done) {
        window.location.assign(done.redirect || "/account");
      }).catch(function (error) {
        button.disabled = false;
        if (status) status.textContent = error.message || "The passkey step did not complete.";
      });
    });
  });
})();
