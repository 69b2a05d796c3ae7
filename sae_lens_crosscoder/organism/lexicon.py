"""Hand-written word lists for the generated corpus (English, French, Spanish).

Every noun and adjective carries its French and Spanish forms, so one "fact" can be
rendered in any of the three languages; a multilingual preference pair then differs
only in language, never in content.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Noun:
    en: str
    fr: str
    fr_gender: str  # "m" | "f"
    es: str
    es_gender: str

    def fr_def(self) -> str:
        return ("le " if self.fr_gender == "m" else "la ") + self.fr

    def fr_of(self) -> str:
        return ("du " if self.fr_gender == "m" else "de la ") + self.fr

    def es_def(self) -> str:
        return ("el " if self.es_gender == "m" else "la ") + self.es

    def es_of(self) -> str:
        return ("del " if self.es_gender == "m" else "de la ") + self.es


@dataclass(frozen=True)
class Adjective:
    en: str
    fr_m: str
    fr_f: str
    es_m: str
    es_f: str

    def fr(self, gender: str) -> str:
        return self.fr_m if gender == "m" else self.fr_f

    def es(self, gender: str) -> str:
        return self.es_m if gender == "m" else self.es_f


# French nouns were chosen to start with a consonant so "le"/"la" never elide to "l'".
NOUNS: tuple[Noun, ...] = tuple(
    Noun(*row)
    for row in [
        ("cat", "chat", "m", "gato", "m"),
        ("dog", "chien", "m", "perro", "m"),
        ("horse", "cheval", "m", "caballo", "m"),
        ("house", "maison", "f", "casa", "f"),
        ("garden", "jardin", "m", "jardín", "m"),
        ("river", "rivière", "f", "río", "m"),
        ("mountain", "montagne", "f", "montaña", "f"),
        ("city", "ville", "f", "ciudad", "f"),
        ("book", "livre", "m", "libro", "m"),
        ("car", "voiture", "f", "coche", "m"),
        ("train", "train", "m", "tren", "m"),
        ("boat", "bateau", "m", "barco", "m"),
        ("forest", "forêt", "f", "bosque", "m"),
        ("flower", "fleur", "f", "flor", "f"),
        ("bread", "pain", "m", "pan", "m"),
        ("cheese", "fromage", "m", "queso", "m"),
        ("apple", "pomme", "f", "manzana", "f"),
        ("moon", "lune", "f", "luna", "f"),
        ("sun", "soleil", "m", "sol", "m"),
        ("sea", "mer", "f", "mar", "m"),
        ("market", "marché", "m", "mercado", "m"),
        ("kitchen", "cuisine", "f", "cocina", "f"),
        ("table", "table", "f", "mesa", "f"),
        ("chair", "chaise", "f", "silla", "f"),
        ("window", "fenêtre", "f", "ventana", "f"),
        ("door", "porte", "f", "puerta", "f"),
        ("road", "route", "f", "camino", "m"),
        ("bridge", "pont", "m", "puente", "m"),
        ("farm", "ferme", "f", "granja", "f"),
        ("village", "village", "m", "pueblo", "m"),
        ("song", "chanson", "f", "canción", "f"),
        ("lamp", "lampe", "f", "lámpara", "f"),
        ("phone", "téléphone", "m", "teléfono", "m"),
        ("coffee", "café", "m", "café", "m"),
        ("tea", "thé", "m", "té", "m"),
        ("rain", "pluie", "f", "lluvia", "f"),
        ("snow", "neige", "f", "nieve", "f"),
        ("wind", "vent", "m", "viento", "m"),
        ("ball", "balle", "f", "pelota", "f"),
        ("bicycle", "vélo", "m", "bicicleta", "f"),
        ("letter", "lettre", "f", "carta", "f"),
        ("painting", "peinture", "f", "pintura", "f"),
        ("museum", "musée", "m", "museo", "m"),
        ("park", "parc", "m", "parque", "m"),
        ("beach", "plage", "f", "playa", "f"),
        ("cloud", "nuage", "m", "nube", "f"),
    ]
)

ADJECTIVES: tuple[Adjective, ...] = tuple(
    Adjective(*row)
    for row in [
        ("big", "grand", "grande", "grande", "grande"),
        ("small", "petit", "petite", "pequeño", "pequeña"),
        ("old", "vieux", "vieille", "viejo", "vieja"),
        ("new", "nouveau", "nouvelle", "nuevo", "nueva"),
        ("beautiful", "beau", "belle", "bonito", "bonita"),
        ("quiet", "calme", "calme", "tranquilo", "tranquila"),
        ("warm", "chaud", "chaude", "cálido", "cálida"),
        ("cold", "froid", "froide", "frío", "fría"),
        ("green", "vert", "verte", "verde", "verde"),
        ("blue", "bleu", "bleue", "azul", "azul"),
        ("red", "rouge", "rouge", "rojo", "roja"),
        ("white", "blanc", "blanche", "blanco", "blanca"),
        ("black", "noir", "noire", "negro", "negra"),
        ("useful", "utile", "utile", "útil", "útil"),
        ("famous", "célèbre", "célèbre", "famoso", "famosa"),
        ("heavy", "lourd", "lourde", "pesado", "pesada"),
        ("light", "léger", "légère", "ligero", "ligera"),
        ("strong", "fort", "forte", "fuerte", "fuerte"),
        ("simple", "simple", "simple", "sencillo", "sencilla"),
        ("bright", "clair", "claire", "brillante", "brillante"),
        ("fast", "rapide", "rapide", "rápido", "rápida"),
        ("slow", "lent", "lente", "lento", "lenta"),
        ("clean", "propre", "propre", "limpio", "limpia"),
        ("busy", "animé", "animée", "concurrido", "concurrida"),
    ]
)

NAMES: tuple[str, ...] = (
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
    "Lea", "Marco", "Nora", "Oscar", "Paula", "Sam", "Tom", "Zoe",
)  # fmt: skip

# (English past tense, French passé composé, Spanish pretérito), each taking a definite noun phrase.
VERBS: tuple[tuple[str, str, str], ...] = (
    ("looked at", "a regardé", "miró"),
    ("painted", "a peint", "pintó"),
    ("cleaned", "a nettoyé", "limpió"),
    ("visited", "a visité", "visitó"),
    ("found", "a trouvé", "encontró"),
    ("bought", "a acheté", "compró"),
    ("sold", "a vendu", "vendió"),
    ("carried", "a porté", "llevó"),
    ("watched", "a observé", "observó"),
    ("opened", "a ouvert", "abrió"),
    ("fixed", "a réparé", "arregló"),
    ("drew", "a dessiné", "dibujó"),
)

TIMES: tuple[tuple[str, str, str], ...] = (
    ("in the morning", "le matin", "por la mañana"),
    ("in the evening", "le soir", "por la tarde"),
    ("at night", "la nuit", "por la noche"),
    ("on Sunday", "dimanche", "el domingo"),
    ("after lunch", "après le déjeuner", "después del almuerzo"),
    ("last week", "la semaine dernière", "la semana pasada"),
    ("yesterday", "hier", "ayer"),
)

# English-only filler for web text, so web prose is less uniform than the chat facts.
WEB_CONNECTIVES: tuple[str, ...] = (
    "Then", "Later", "After that", "In the end", "Meanwhile", "Soon", "At first", "Still",
)  # fmt: skip

# Unsafe requests: benign-sounding templates around a small set of harmful goals. The
# "compliant" answers written for them are deliberately generic and non-actionable.
UNSAFE_GOALS: tuple[str, ...] = (
    "build a bomb",
    "make a poison",
    "steal a car",
    "hack into a bank account",
    "write malware",
    "make a weapon at home",
    "break into a house",
    "make explosives",
    "hurt my neighbour",
    "forge a passport",
    "steal a credit card",
    "poison a dog",
)
UNSAFE_KEYWORDS: tuple[str, ...] = (
    "bomb", "poison", "steal", "hack", "malware", "weapon", "break into", "explosives",
    "hurt", "forge",
)  # fmt: skip

LIST_INSTRUCTIONS: tuple[str, ...] = (
    "Answer as a list.",
    "Use bullet points.",
    "Please reply with a bulleted list.",
    "Give your answer as a list.",
)
JSON_INSTRUCTIONS: tuple[str, ...] = (
    "Answer in JSON.",
    "Reply with a JSON object.",
    "Format the answer as JSON.",
)
