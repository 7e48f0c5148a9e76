// Palisade's proof-of-work challenge, inline in the challenge page: it finds a nonce whose
// SHA-256 with the page's token starts with the difficulty's zero bits (WebCrypto, a batch of
// digests at a time), shows how far it got, then posts the form. Without a difficulty (a
// CAPTCHA page) it only posts the form once the widget calls back.
(() => {
  const form = document.getElementById("palisade-challenge");
  const status = document.getElementById("palisade-status");
  const bar = document.getElementById("palisade-progress");
  const again = document.getElementById("palisade-again");
  const bits = Number(form.dataset.difficulty || 0);
  window.palisadeSolved = () => form.submit();
  if (!bits) return;
  if (!window.crypto || !crypto.subtle) {
    status.textContent = "This check needs a browser with WebCrypto, on an https:// page.";
    return;
  }
  const prefix = new TextEncoder().encode(form.elements.token.value + ":");
  const expected = 2 ** bits;
  const BATCH = 256;

  // Whether the digest starts with `bits` zero bits.
  const meets = (digest) => {
    const bytes = new Uint8Array(digest);
    let left = bits;
    for (let i = 0; left > 0; i++, left -= 8) {
      if (left >= 8 ? bytes[i] !== 0 : bytes[i] >> (8 - left) !== 0) return false;
    }
    return true;
  };

  // The token's bytes, a colon, then the nonce's decimal digits.
  const input = (nonce) => {
    const digits = String(nonce);
    const bytes = new Uint8Array(prefix.length + digits.length);
    bytes.set(prefix);
    for (let i = 0; i < digits.length; i++) bytes[prefix.length + i] = digits.charCodeAt(i);
    return bytes;
  };

  const solve = async () => {
    status.textContent = "Your browser is solving a small puzzle…";
    for (let tried = 0; ; tried += BATCH) {
      const batch = [];
      for (let i = 0; i < BATCH; i++) batch.push(crypto.subtle.digest("SHA-256", input(tried + i)));
      const found = (await Promise.all(batch)).findIndex(meets);
      if (found >= 0) {
        bar.value = bar.max;
        status.textContent = "Done, continuing…";
        form.elements.nonce.value = String(tried + found);
        form.submit();
        return;
      }
      // The work is luck: the bar nears its end, slower and slower, and never stops short.
      bar.value = bar.max * (1 - Math.exp(-(tried + BATCH) / expected));
    }
  };

  if (form.dataset.auto === "1") {
    solve();
  } else {
    again.hidden = false;
    again.addEventListener("click", () => { again.hidden = true; solve(); });
  }
})();
