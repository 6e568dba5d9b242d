"""Which catalogue search an email asks for: Shopify search syntax built from its words (pure).

A product question names the product in its own words ("do you have the wool scarf in navy?",
"vocês têm a camiseta de algodão no tamanho M?", "¿tienen la bufanda de lana?"). The search keeps
what could name a product: names in quotes as phrases, then the remaining words that are not
function words or the vocabulary every support email shares (hello, order, price, stock ...),
subject words first, most frequent first. Words become prefix terms without a plural `s`, so
"camisetas" finds "Camiseta". Terms are OR-ed and the shop ranks by relevance; only active
products are asked for (`status:active`), and worker.shopify keeps only those published to the
online store.

Every term is made of letters and digits only (a quoted name also of spaces and hyphens), so the
customer's text can never add a filter of its own to the search.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

MAX_TERMS = 6  # words and names in one search; more only dilutes the shop's relevance ranking
MAX_QUOTED = 2
MAX_QUOTED_CHARS = 60
MAX_QUOTED_WORDS = 6
MIN_WORD_CHARS = 3
ACTIVE_ONLY = "status:active"

# Phrases that make an email a question about the catalogue (accent-free, lower-case, matched
# as whole words). Decided from the text alone, so the search can run before the model reads the
# email (one model call classifies and answers together).
# fmt: off
PRODUCT_CUES = (
    # pt
    "voces tem", "vcs tem", "tem disponivel", "tem em estoque", "disponivel", "disponiveis",
    "estoque", "tamanho", "tamanhos", "quanto custa", "qual o preco", "qual o valor", "preco",
    "cor", "cores", "modelo", "medidas", "material", "vende", "vendem", "voltou ao estoque",
    # en
    "do you have", "do you sell", "do you stock", "in stock", "out of stock", "back in stock",
    "available", "availability", "how much", "price", "size", "sizes", "colour", "colours",
    "color", "colors", "which model", "is it made",
    # es
    "tienen", "tienes", "hay stock", "en stock", "disponible", "disponibles", "talla", "tallas",
    "cuanto cuesta", "cuanto vale", "precio", "colores", "venden",
)
# fmt: on

_QUOTED = re.compile(r'"([^"\n]{3,80})"|“([^”\n]{3,80})”|«([^»\n]{3,80})»')
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_NAME_KEEP = re.compile(r"[^\w\s-]", re.UNICODE)

# Function words and the vocabulary every support email shares, in pt, en and es, accent-free
# and lower-case (matched after folding). Kept short on purpose: a noun that is left in costs
# relevance, a product word that is dropped costs the answer.
# fmt: off
STOPWORDS = frozenset("""
a o as os um uma uns umas de da do das dos em no na nos nas por para pra com sem sob sobre e ou
mas que se ja nao sim muito muita muitos muitas mais menos ate como quando onde qual quais quem
este esta estes estas esse essa esses essas isso isto aquele aquela eu tu ele ela nos voces voce
vos eles elas me te lhe meu minha meus minhas seu sua seus suas teu tua nosso nossa
ser estar ter haver ir fazer poder querer saber ver dar tem tenho temos tinha seria sao era foi
estou estao esta estava vou vai posso pode podem gostaria queria quero preciso precisava sei
ola oi bom boa dia tarde noite obrigado obrigada obrigados abraco abracos atenciosamente grato
grata favor pf pfv tudo bem alguem algum alguma ainda tambem so apenas entao assim aqui agora
produto produtos item itens loja site compra comprar comprei pedido pedidos preco precos valor
custa custo estoque disponivel disponiveis disponibilidade tamanho tamanhos cor cores modelo
duvida pergunta informacao informacoes saber mesmo mesma outro outra novo nova
the an and or but if of to in on at by for with without from into about as is are was were be
been being am do does did have has had having can could would should will shall may might must
i you he she it we they me him her us them my your his its our their this that these those
there here what which who whom when where why how all any some no not yes very more most much
many also just only still again too so than then hello hi hey dear thanks thank regards best
kind cheers please pls sir madam team store shop website site product products item items order
orders ordered buy bought purchase purchased price prices cost costs stock available
availability size sizes colour colours color colors model question info information know want
wanted like love would same other another new get got see look looking find tell let
el la los las un una unos unas del al en y o pero si no mas muy que como cuando donde cual
cuales quien este esta estos estas ese esa esos esas eso esto yo tu usted ustedes nosotros
ellos ellas mi mis su sus nuestro nuestra ser estar tener hay hacer puedo puede pueden quiero
quisiera queria necesito hola buenos buenas dias tardes noches gracias saludos atentamente por
favor algo alguien tambien solo ahora aqui tienen tiene tengo producto productos articulo
articulos tienda compra comprar compre pedido pedidos precio precios cuesta costo existencias
disponible disponibles disponibilidad talla tallas color colores modelo pregunta informacion
mismo misma otro otra nuevo nueva momento moment
hasn doesn isn don didn wasn aren won can couldn wouldn haven teneis tenes
quanto quanta quantos quantas cuanto cuanta cuantos cuantas
""".split())
# fmt: on


def fold(text: str) -> str:
    """Lower-case and accent-free, so 'Disponível' is the stop word 'disponivel'."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def quoted_names(text: str) -> list[str]:
    """Names the customer put in quotes ("Wool Scarf", “Caneca Esmaltada”), cleaned, at most 2."""
    names: list[str] = []
    for match in _QUOTED.finditer(text):
        raw = next(group for group in match.groups() if group is not None)
        name = " ".join(_NAME_KEEP.sub(" ", raw).split())[:MAX_QUOTED_CHARS].strip(" -").lower()
        if (
            len(name) >= MIN_WORD_CHARS
            and len(name.split()) <= MAX_QUOTED_WORDS
            and name not in names
        ):
            names.append(name)
        if len(names) == MAX_QUOTED:
            break
    return names


def keywords(subject: str, body: str) -> list[str]:
    """The words that may name a product, subject words first, then by frequency in the body."""
    ranked: Counter[str] = Counter()
    order: dict[str, int] = {}
    for weight, text in ((3, subject), (1, body)):
        for word in _WORD.findall(text.lower()):
            if len(word) < MIN_WORD_CHARS or word.isdigit() or fold(word) in STOPWORDS:
                continue
            ranked[word] += weight
            order.setdefault(word, len(order))
    return sorted(ranked, key=lambda w: (-ranked[w], order[w]))


def prefix_term(word: str) -> str:
    """A word as a prefix term without a plural `s`: 'camisetas' -> 'camiseta*'."""
    stem = word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith("ss") else word
    return f"{stem}*"


def product_search(subject: str, body: str, *, words: bool = True) -> str | None:
    """The Shopify search for the products an email is about, or None when nothing names one.

    With `words` false only names in quotes are searched.
    """
    text = f"{subject}\n{body}"
    names = quoted_names(text)
    terms = [f'"{name}"' for name in names]
    if words:
        # Words of a quoted name are searched too: a name slightly off still finds its product.
        for word in keywords(subject, body):
            if len(terms) >= MAX_TERMS:
                break
            term = prefix_term(word)
            if term not in terms:
                terms.append(term)
    if not terms:
        return None
    return f"{ACTIVE_ONLY} AND ({' OR '.join(terms[:MAX_TERMS])})"


def asks_about_products(subject: str, body: str) -> bool:
    """Whether the email asks about the catalogue: availability, price, size, colour (pure)."""
    folded = fold(f"{subject}\n{body}")
    return any(
        re.search(rf"(?<![a-z0-9]){re.escape(cue)}(?![a-z0-9])", folded) for cue in PRODUCT_CUES
    )


def search_for(subject: str, body: str) -> str | None:
    """The catalogue search this email warrants (None: no product lookup).

    A question about products is searched by its words; any other email only when it names a
    product in quotes.
    """
    return product_search(subject, body, words=asks_about_products(subject, body))
